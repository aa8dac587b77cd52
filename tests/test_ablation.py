"""The ablation benchmark's plumbing: which recipe each lever gives, and one real tiny run."""

from __future__ import annotations

import json

import pytest

from autotune.recipe import baseline_recipe
from autotune.tasks import load_task
from benchmarks.ablation import LEVERS, main, variant

LEVER = {lv.name: lv for lv in LEVERS}


def test_a_lever_switches_on_from_the_baseline_and_off_from_a_recipe_that_has_it():
    task = load_task("mnist")
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    on, label = variant(LEVER["bf16"], task, base, "cpu")
    assert (label, on.precision) == ("on", "bf16")
    assert on.replace(precision="fp32") == base  # nothing else changed

    winner = base.replace(precision="bf16", grad_clip=1.0, batch_size=64, lr=base.lr * 2**0.5,
                          warmup_steps=100)
    off, label = variant(LEVER["bf16"], task, winner, "cpu")
    assert (label, off.precision) == ("off", "fp32")
    assert off.replace(precision="bf16") == winner
    smaller, label = variant(LEVER["batch2x"], task, winner, "cpu")
    assert (label, smaller.batch_size, smaller.warmup_steps) == ("off", 32, 100)
    assert abs(smaller.lr - base.lr) < 1e-12  # the learning rate follows the batch back


def test_the_batch_lever_scales_the_learning_rate_by_the_square_root_for_adam():
    task = load_task("mnist")
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    bigger, _ = variant(LEVER["batch2x"], task, base, "cpu")
    assert bigger.batch_size == 2 * base.batch_size
    assert abs(bigger.lr / base.lr - 2**0.5) < 1e-9 and bigger.warmup_steps == 100


def test_levers_that_cannot_act_here_say_why_instead_of_running():
    task = load_task("mnist")
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    assert variant(LEVER["tf32"], task, base, "cpu") == (None, "GPU only (no such hardware "
                                                               "path on a CPU)")
    recipe, why = variant(LEVER["loader1"], task, base, "cpu")
    assert recipe is None and "tensors" in why


@pytest.mark.slow  # ~35-60 s: kept out of the default tier (under 15 min)
def test_a_real_run_prints_the_table_and_writes_every_trial(tmp_path, capsys):
    out = tmp_path / "ablation.json"
    assert main(["--tasks", "mnist", "--seeds", "1", "--levers", "clip1", "tf32",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "clip1" in printed and "n/a" in printed
    rows = json.loads(out.read_text())["tasks"]["mnist"]
    assert rows["clip1"]["recipe"]["grad_clip"] == 1.0 and rows["clip1"]["switched"] == "on"
    run = rows["start"]["runs"][0]
    assert run["steps"] > 0 and run["status"] in ("reached", "not_reached")
    assert "n/a" in rows["tf32"]
