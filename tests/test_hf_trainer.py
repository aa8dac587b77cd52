"""``--trainer``: a real Hugging Face ``Trainer`` searched under autotune's clock
(``autotune.integrations.hf_trainer``), on the tiny BERT of ``tests/hf_trainer_task.py``.

A real search (Ray Tune trials, Optuna proposals) writes a recipe; the recipe a trial applied is
what the Trainer ran with, as seen from inside it; the user's mistakes are one paragraph and
exit 2 before anything is searched; what a trial's loop does to it is a recorded status.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
import transformers
import yaml

from autotune import objective
from autotune.cli import main
from autotune.integrations import trainer_task
from autotune.integrations.hf_args import hf_training_arguments
from autotune.integrations.hf_trainer import (
    TRAINER_DIR_PREFIX,
    recipe_from_training_arguments,
    run_trainer,
    trainer_arguments,
    trainer_output_dir,
)
from autotune.knobs import deepspeed_config, lr_factor
from autotune.memory import predict_peak
from autotune.recipe import Recipe
from autotune.train import TrialLimits, run_trial
from tests import hf_trainer_task
from tests.hf_trainer_task import SEEN, make_spied_trainer

FACTORY = "tests.hf_trainer_task:make_trainer"


def _limits(**changes: object) -> TrialLimits:
    base = dict(max_train_seconds=20.0, eval_every_seconds=0.3, target=1.01, seed=0)  # never
    return TrialLimits(**{**base, **changes})  # type: ignore[arg-type]


def test_a_real_search_over_a_trainer_writes_the_winning_recipe(tmp_path, capsys):
    """The command of the README: two trials on Ray, Optuna's study, the recipe written, and
    the baseline measured from the user's own TrainingArguments."""
    own = tmp_path / "my_args.yaml"
    own.write_text(yaml.safe_dump({"learning_rate": 5e-4, "per_device_train_batch_size": 16}))
    results = tmp_path / "run"
    code = main(["search", "--trainer", FACTORY, "--metric", "eval_accuracy", "--target",
                 "0.8", "--trainer-args", str(own), "--budget", "16GB", "--trials", "2",
                 "--max-trial-time", "20s", "--eval-every", "0.5s", "--time-budget", "2m",
                 "--confirm", "0", "--results-dir", str(results), "-q"])
    out = capsys.readouterr()
    assert code == 0, out.err
    records = [json.loads(line) for line in (results / "trials.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[0]["is_baseline"]
    baseline = Recipe.from_dict(records[0]["recipe"])
    assert (baseline.lr, baseline.batch_size, baseline.grad_clip) == (5e-4, 16, 1.0)
    assert records[0]["status"] == objective.REACHED, records[0]["message"]
    for r in records:  # the second may be stopped early by the scheduler, if it falls behind
        assert r["status"] in (objective.REACHED, objective.STOPPED), r["message"]
        if r["status"] == objective.REACHED:
            assert 0 < r["tta_seconds"] <= 20.0 and r["curve"][-1][1] >= 0.8
        assert r["curve"] and r["steps"] > 0
        assert r["peak_memory_bytes"] > 0 and r["peak_memory_source"] == "cpu_rss"
        assert r["eval_seconds"] > 0  # measured, not counted
        assert r["predicted_peak_bytes"] > 0  # the memory gate traced the Trainer's model
    best = yaml.safe_load((results / "best_recipe.yaml").read_text())
    winner = min((r for r in records if r["tta_seconds"]), key=lambda r: r["tta_seconds"])
    assert best["recipe"] == winner["recipe"]
    assert best["measured"]["tta_seconds"] == pytest.approx(winner["tta_seconds"])
    assert "--trainer tests.hf_trainer_task:make_trainer" in \
        (results / "best_recipe.yaml").read_text().splitlines()[0]
    settings = json.loads((results / "settings.json").read_text())["settings"]
    assert settings["integration"] == "trainer" and settings["metric"] == "eval_accuracy"
    # The winner exports through the same mapping its trial trained with.
    assert main(["export", str(results / "best_recipe.yaml"), "--format", "hf", "--device",
                 "cpu", "--hf-format", "json"]) == 0
    exported = json.loads((results / "hf_training_args.json").read_text())
    assert exported == hf_training_arguments(Recipe.from_dict(best["recipe"]),
                                             device_type="cpu")


def test_the_recipe_applied_is_what_the_trainer_ran_with():
    """Precision, micro-batch, accumulation, clipping and the schedule, read inside the
    Trainer: the arguments it holds, each forward pass's rows and autocast, the optimizer's
    learning rate after each step."""
    recipe = Recipe(precision="bf16", batch_size=8, accumulation_steps=2, warmup_steps=3,
                    schedule="linear", decay_steps=10, lr=1e-3, weight_decay=0.0, grad_clip=0.5)
    task = trainer_task(make_spied_trainer, metric="eval_accuracy", target=0.999, probe=False)
    result = run_trial(task, recipe, _limits(max_steps=12), device="cpu")
    assert result.status == objective.NOT_REACHED and result.steps == 12, result.message
    assert result.examples == 12 * 16
    args = SEEN["args"][0]
    assert (args.bf16, args.per_device_train_batch_size, args.gradient_accumulation_steps,
            args.max_grad_norm, args.learning_rate) == (True, 8, 2, 0.5, 1e-3)
    assert len(SEEN["forward"]) == 2 * 12  # two micro-batches per optimizer step
    assert set(SEEN["forward"]) == {(8, True, torch.bfloat16)}
    assert isinstance(SEEN["optimizer"].optimizer, torch.optim.AdamW)  # inside accelerate's wrapper
    ours = [recipe.lr * lr_factor(step, recipe) for step in range(1, 13)]
    # after warmup the Trainer's rate is the recipe's step for step (HF's warmup starts at 10%)
    assert SEEN["lr"][recipe.warmup_steps:] == pytest.approx(ours[recipe.warmup_steps:],
                                                              rel=1e-9)


def test_evaluation_is_on_the_training_clock_and_off_it():
    """Evaluations come on the training clock's schedule, and their time (each 0.2 s longer
    here, by a slow compute_metrics) is not counted; as in autotune's own loop, the next one
    waits until the trial's evaluations are at most a quarter of its training (the k+1-th
    point after k x 0.2 / 0.25 = k x 0.8 s)."""
    task = trainer_task(hf_trainer_task.make_slow_eval_trainer, metric="eval_accuracy",
                        target=0.9, probe=False)
    began = time.perf_counter()
    result = run_trial(task, Recipe(batch_size=16, lr=5e-4), _limits(max_train_seconds=3.0),
                       device="cpu")
    wall = time.perf_counter() - began
    assert result.status == objective.NOT_REACHED
    times = [t for t, _ in result.curve]
    assert len(times) >= 3 and times[0] >= 0.3, times
    assert all(t >= k * 0.8 for k, t in enumerate(times[:-1])), times  # last: the limit
    assert result.eval_seconds >= 0.2 * len(times)
    assert 3.0 <= result.train_seconds < wall - result.eval_seconds
    # the training clock is the Trainer's wall time from on_train_begin less the evaluations
    trained = SEEN["ended"] - SEEN["began"]
    assert result.train_seconds == pytest.approx(trained - result.eval_seconds, abs=0.15)


def test_a_metric_the_trial_never_sees_is_a_recorded_error_naming_those_it_did():
    result = run_trainer(hf_trainer_task.make_trainer, FACTORY, "eval_f1",
                         Recipe(batch_size=16), _limits(), device="cpu")
    assert result.status == objective.ERROR
    assert result.message.startswith("MetricMissing: the Trainer's evaluation reported")
    assert "eval_accuracy" in result.message and "'eval_f1'" in result.message
    assert result.steps > 0


def test_out_of_memory_is_infeasible_and_keeps_what_was_measured():
    task = trainer_task(hf_trainer_task.out_of_memory_after_steps, metric="eval_accuracy",
                        target=0.999, probe=False)
    result = run_trial(task, Recipe(batch_size=16, lr=5e-4),
                       _limits(eval_every_seconds=0.01), device="cpu")
    assert result.status == objective.INFEASIBLE and "out of memory" in result.message
    assert result.steps == 5 and len(result.curve) >= 1  # the evaluations before it, kept
    assert result.peak_memory_bytes > 0


def test_a_zero_recipes_arguments_carry_the_deepspeed_config_of_the_export(tmp_path):
    """A ZeRO trial's Trainer runs DeepSpeed from the config ``autotune export --format hf``
    writes beside its arguments (the schedule left to the Trainer); its multi-worker trials
    are in tests/test_integration_workers.py."""
    recipe = Recipe(parallelism="zero2", workers=2, precision="bf16", batch_size=8,
                    accumulation_steps=2, grad_clip=0.5)
    args = trainer_arguments(recipe, tmp_path, "cpu")
    assert args.deepspeed == str(tmp_path / "ds_config.json")
    written = json.loads((tmp_path / "ds_config.json").read_text())
    assert written == deepspeed_config(recipe, device_type="cpu", with_scheduler=False)
    assert written["train_batch_size"] == 8 * 2 * 2 and "scheduler" not in written


@pytest.mark.parametrize(("argv", "message"), [
    (["--trainer", "tests.hf_trainer_task:not_a_trainer", "--metric", "eval_accuracy",
      "--target", "0.8"], "returned dict, not a transformers.Trainer"),
    (["--trainer", "tests.hf_trainer_task:own_arguments", "--metric", "eval_accuracy",
      "--target", "0.8"], "pass on the ones it is given"),
    (["--trainer", "tests.hf_trainer_task:no_metrics", "--metric", "eval_accuracy",
      "--target", "0.8"], "the Trainer's evaluation reported epoch, eval_loss, "),
    (["--trainer", FACTORY, "--metric", "eval_loss", "--direction", "max", "--target", "0.5"],
     "means nothing for 'eval_loss' in direction max (given)"),
    (["--trainer", FACTORY, "--metric", "eval_accuracy", "--target", "0.2"],
     "the untrained model already has 0.5117"),
    (["--trainer", FACTORY, "--target", "0.8"], "--trainer needs --metric"),
    (["--trainer", FACTORY, "--metric", "eval_accuracy"], "--trainer needs --target"),
    (["--model", "mnist", "--metric", "accuracy"], "--metric applies to --trainer"),
])
def test_user_mistakes_exit_2_with_one_paragraph(argv, message, tmp_path, capsys):
    code = main(["search", *argv, "--results-dir", str(tmp_path / "run"), "--trials", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "trials.jsonl").exists()  # nothing searched


def test_the_metric_may_be_named_without_the_eval_prefix():
    task = trainer_task(FACTORY, metric="accuracy", target=0.9)
    assert task.metric == "eval_accuracy" and task.higher_is_better
    assert task.is_dataset  # the Trainer's datasets: the DataLoader knobs can act
    assert trainer_task(FACTORY, metric="eval_loss", target=0.1,
                        probe=False).higher_is_better is False


def test_the_memory_gate_predicts_from_the_trainers_model_and_data():
    """A Trainer with a transformers model and torch Datasets is traced like a task: a step
    and an evaluation of its eval batch size, growing with the batch."""
    task = trainer_task(FACTORY, metric="eval_accuracy", target=0.9, eval_batch_size=64)
    small = predict_peak(task, Recipe(batch_size=8), "cpu")
    large = predict_peak(task, Recipe(batch_size=512), "cpu")
    assert 0 < small.peak_bytes < large.peak_bytes


def test_trial_arguments_are_the_export_mapping_plus_the_trial_settings(tmp_path):
    recipe = Recipe(precision="bf16", batch_size=4, accumulation_steps=4, warmup_steps=10,
                    schedule="cosine", optimizer="sgd", lr=0.05, grad_clip=1.0,
                    dataloader_workers=2, persistent_workers=True)
    args = trainer_arguments(recipe, tmp_path, "cpu", seed=3)
    for key, value in hf_training_arguments(recipe, device_type="cpu").items():
        got = getattr(args, key)
        assert getattr(got, "value", got) == value, key
    assert (args.max_steps, args.save_strategy, args.seed) == (10**9, "no", 3)


def test_the_users_arguments_become_the_baseline_recipe():
    recipe = recipe_from_training_arguments({
        "bf16": True, "per_device_train_batch_size": 24, "gradient_accumulation_steps": 2,
        "learning_rate": 3e-4, "weight_decay": 0.01, "max_grad_norm": 0.0,
        "optim": "adamw_torch_fused", "warmup_steps": 50, "lr_scheduler_type": "cosine",
        "max_steps": 900})
    assert recipe == Recipe(precision="bf16", batch_size=24, accumulation_steps=2, lr=3e-4,
                            weight_decay=0.01, grad_clip=0.0, fused_optimizer="fused",
                            warmup_steps=50, schedule="cosine", decay_steps=900,
                            pin_memory=True)
    defaults = recipe_from_training_arguments({})
    hf = transformers.TrainingArguments(output_dir="unused", report_to="none")
    assert (defaults.batch_size, defaults.lr, defaults.grad_clip) == (
        hf.per_device_train_batch_size, hf.learning_rate, hf.max_grad_norm)


def test_a_trial_removes_the_trainer_directories_of_dead_trial_processes(tmp_path, monkeypatch):
    """A trial process killed by Ray leaves its Trainer's temporary directory behind; the next
    trial on the machine removes those whose process is gone, and only those."""
    import os
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f"{TRAINER_DIR_PREFIX}{int(gone.stdout)}-abc"
    (dead / "checkpoint").mkdir(parents=True)
    mine = tmp_path / f"{TRAINER_DIR_PREFIX}{os.getpid()}-def"
    mine.mkdir()
    unnamed = tmp_path / f"{TRAINER_DIR_PREFIX}xyz"  # not ours to judge: no process id
    unnamed.mkdir()
    with trainer_output_dir() as out:
        assert os.path.basename(out).startswith(f"{TRAINER_DIR_PREFIX}{os.getpid()}-")
        assert not dead.exists() and mine.exists() and unnamed.exists()
    assert not os.path.exists(out)
