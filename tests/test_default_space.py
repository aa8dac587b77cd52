"""The default search space: built from any baseline, holds it, loads, commented."""

from __future__ import annotations

import optuna
import pytest
import yaml

import autotune.default_space as default_space_module
from autotune.default_space import default_space, default_space_yaml
from autotune.errors import ConfigError
from autotune.recipe import Recipe
from autotune.space import load_space, parse_space, shipped_spaces
from autotune.warm_start import snap_to_space, warm_starts

optuna.logging.set_verbosity(optuna.logging.WARNING)

BERT = Recipe(batch_size=32, lr=5e-4)
BASELINES = [
    BERT,
    Recipe(batch_size=8, lr=1e-3),
    Recipe(batch_size=100, lr=1e-4, optimizer="adam"),
    Recipe(batch_size=32, lr=3e-2, optimizer="sgd"),
    Recipe(batch_size=1, lr=4e-5),
    Recipe(batch_size=3, lr=0.1, optimizer="sgd", momentum=0.0),
    Recipe(batch_size=32, lr=5e-4, precision="bf16", warmup_steps=37, schedule="cosine",
           accumulation_steps=3),
    Recipe(batch_size=64, lr=2e-3, precision="fp16", parallelism="ddp", workers=2),
]
DEVICES = [("cpu", True), ("cpu", False), ("cuda", True), ("cuda", False)]
KNOBS = ["precision", "batch_size", "accumulation_steps", "warmup_steps", "schedule",
         "optimizer", "lr", "lr@sgd", "momentum", "grad_clip", "fused_optimizer", "parallelism"]


def space_for(baseline=BERT, device="cpu", fast=True):
    return default_space(baseline, device, bf16_fast=fast, source="bert")


@pytest.mark.parametrize(("device", "fast"), DEVICES)
@pytest.mark.parametrize("baseline", BASELINES, ids=lambda r: r.describe())
def test_the_baseline_lies_in_the_default_space(baseline, device, fast):
    space = space_for(baseline, device, fast)
    assert space.to_recipe(space.point_for(baseline), baseline) == baseline


@pytest.mark.parametrize(("device", "fast"), DEVICES)
@pytest.mark.parametrize("baseline", BASELINES[:6], ids=lambda r: r.describe())
def test_every_warm_start_lies_in_the_default_space_as_it_is(baseline, device, fast):
    space = space_for(baseline, device, fast)
    for ws in warm_starts(baseline, device, bf16_fast=fast):
        assert snap_to_space(ws, space) == ws, ws.name


def test_the_default_space_has_the_listed_knobs_and_sgd_conditions():
    space = space_for()
    assert space.names == KNOBS
    for name in ("lr@sgd", "momentum"):
        assert space.knob(name).when == (("optimizer", ("sgd",)),)
    assert space.knob("lr").when == (("optimizer", ("adamw", "adam")),)
    assert space.knob("parallelism").choices == ("single",)
    assert space.knob("accumulation_steps").choices == (1, 2, 4)
    assert space.knob("schedule").choices == ("constant", "linear", "cosine")
    assert space.knob("optimizer").choices == ("adamw", "adam", "sgd")
    warmups = space.knob("warmup_steps").choices
    assert 0 in warmups and 100 in warmups


def test_clipping_and_fused_everywhere_tf32_only_on_cuda():
    cpu, cuda = space_for(device="cpu"), space_for(device="cuda")
    for space in (cpu, cuda):
        assert space.knob("grad_clip").choices == (0.0, 1.0)
        assert space.knob("fused_optimizer").choices == ("default", "fused")
    assert "tf32" not in cpu.names  # infeasible on a CPU: no trial would run
    assert cuda.knob("tf32").choices == (False, True)
    assert "compile" not in cpu.names  # cannot pay off within a CPU trial (measured)
    assert cuda.knob("compile").choices == ("none", "default")
    assert cuda.names == [*KNOBS[:-1], "tf32", "compile", "parallelism"]


@pytest.mark.parametrize(("device", "fast", "expected"), [
    ("cpu", True, ("fp32", "bf16")), ("cpu", False, ("fp32",)),
    ("cuda", True, ("fp32", "bf16", "fp16")), ("cuda", False, ("fp32", "fp16"))])
def test_precision_is_what_the_device_runs_natively(device, fast, expected):
    assert space_for(BERT, device, fast).knob("precision").choices == expected


@pytest.mark.parametrize(("batch", "expected"), [
    (32, (16, 32, 64, 128)), (8, (4, 8, 16, 32)), (100, (50, 100, 200, 400)), (3, (3, 6, 12)),
    (1, (1, 2, 4))])
def test_batch_sizes_are_half_to_four_times_the_baseline(batch, expected):
    assert space_for(Recipe(batch_size=batch)).knob("batch_size").choices == expected


def test_adam_lr_range_is_a_log_range_of_x4_around_the_baseline():
    lr = space_for().knob("lr")
    assert (lr.low, lr.high, lr.log) == (1.25e-4, 2e-3, True)
    sgd = space_for().knob("lr@sgd")  # converted: x100, /10 .. x10
    assert (sgd.low, sgd.high, sgd.log) == (5e-3, 0.5, True)


def test_sgd_baseline_gets_its_own_lr_range_around_it():
    space = space_for(Recipe(batch_size=32, lr=3e-2, optimizer="sgd"))
    sgd, adam = space.knob("lr@sgd"), space.knob("lr")
    assert (sgd.low, sgd.high) == (7.5e-3, 0.12)
    assert (adam.low, adam.high) == (3e-5, 3e-3)


def test_small_learning_rates_are_written_as_yaml_floats():
    text = default_space_yaml(Recipe(lr=4e-5), "cpu", bf16_fast=False, source="bert")
    low = yaml.safe_load(text)["knobs"]["lr"]["low"]
    assert isinstance(low, float) and low == 1e-5  # "1e-05" would load as a string


def test_default_space_is_the_parsed_text():
    text = default_space_yaml(BERT, "cpu", bf16_fast=True, source="bert")
    space = space_for()
    assert space.knobs == parse_space(text).knobs
    assert space.source == "<default space for bert>"


def test_a_generator_bug_is_reported_as_a_config_error(monkeypatch):
    monkeypatch.setattr(default_space_module, "ACCUMULATION_STEPS", (0, 1, 2))
    with pytest.raises(ConfigError, match=r"(?s)<default space for bert>.*accumulation_steps"):
        space_for()


def test_samples_of_the_default_space_are_valid_recipes():
    space = space_for(BASELINES[3], "cuda", True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    optimizers = set()
    for _ in range(40):
        trial = study.ask()
        recipe = space.to_recipe(space.suggest(trial), BASELINES[3])
        study.tell(trial, 0.0)
        assert recipe.problems() == []
        optimizers.add(recipe.optimizer)
    assert optimizers == {"adamw", "adam", "sgd"}


@pytest.mark.parametrize("source", ["bert", "my_pkg.tasks:build"])
def test_header_names_its_origin_and_the_command_for_an_edited_copy(source):
    text = default_space_yaml(BERT, "cpu", bf16_fast=True, source=source)
    assert f"autotune search --model {source} --space PATH" in text
    assert "generated from its baseline recipe" in text
    assert parse_space(text).model == source
    assert all(len(line) <= 100 for line in text.splitlines())


def test_every_setting_has_a_comment_above_it():
    lines = default_space_yaml(BERT, "cuda", bf16_fast=True, source="bert").splitlines()
    knob_lines = [i for i, line in enumerate(lines) if line.startswith("  ") and
                  not line.startswith("   ") and not line.lstrip().startswith("#")]
    assert [lines[i].strip().rstrip(":") for i in knob_lines] == [*KNOBS[:-1], "tf32",
                                                                   "compile", "parallelism"]
    for i in knob_lines:
        assert lines[i - 1].startswith("  # "), lines[i]


@pytest.mark.parametrize("path", shipped_spaces(), ids=lambda p: p.name)
def test_every_shipped_space_still_loads(path):
    load_space(path).point_for(Recipe(lr=1e-3))


@pytest.mark.parametrize("device,cpus", [("cpu", 2), ("cpu", 1), ("cuda", 16)])
def test_a_dataset_task_searches_the_dataloader_knobs(device, cpus):
    space = default_space(BERT, device, bf16_fast=True, source="mine", dataset=True, cpus=cpus)
    names = [k.name for k in space.knobs]
    assert space.knob("dataloader_workers").choices == (0, 1, 2, 4)[: 1 + min(cpus, 3)]
    for conditional in ("prefetch_factor", "persistent_workers"):
        when = dict(space.knob(conditional).when)
        assert 0 not in when["dataloader_workers"]
    # Pinned memory only where there is a GPU to copy to.
    assert ("pin_memory" in names) == (device == "cuda")
    tensors = default_space(BERT, device, bf16_fast=True, source="mine", cpus=cpus)
    assert not {"dataloader_workers", "prefetch_factor", "persistent_workers",
                "pin_memory"} & {k.name for k in tensors.knobs}
