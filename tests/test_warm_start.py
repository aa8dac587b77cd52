"""The warm-start rules: each recipe is what its rule says, and snapping into a space."""

from __future__ import annotations

import math

import pytest

from autotune.recipe import Recipe
from autotune.space import SPACES_DIR, load_space, parse_space
from autotune.warm_start import (
    WARMUP_STEPS,
    native_precision,
    snap_all_to_space,
    snap_to_space,
    warm_starts,
)

BERT = Recipe(batch_size=32, lr=5e-4)
SGD = Recipe(batch_size=32, lr=0.1, optimizer="sgd")


def by_name(warm):
    return {ws.name: ws for ws in warm}


# -- the rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "bf16_fast", "expected"),
    [("cpu", True, "bf16"), ("cpu", False, None), ("cuda", True, "bf16"),
     ("cuda", False, "fp16"), ("cuda:1", False, "fp16"), ("mps", False, None)],
)
def test_native_precision_is_bf16_where_fast_fp16_on_cuda_else_none(device, bf16_fast, expected):
    assert native_precision(device, bf16_fast=bf16_fast) == expected


def test_bf16_fast_cpu_gets_precision_batch_and_both_in_that_order():
    warm = warm_starts(BERT, "cpu", bf16_fast=True)
    assert [ws.name for ws in warm] == [
        "bf16", "batch x2, lr x sqrt2, warmup 100", "bf16, batch x2, lr x sqrt2, warmup 100"]
    assert warm[0].recipe == BERT.replace(precision="bf16")
    assert warm[2].recipe == warm[1].recipe.replace(precision="bf16")
    assert warm == warm_starts(BERT, "cpu", bf16_fast=True)  # deterministic


def test_cpu_without_fast_bf16_gets_no_precision_rule():
    warm = warm_starts(BERT, "cpu", bf16_fast=False)
    assert [ws.recipe.precision for ws in warm] == ["fp32"]
    assert [ws.name for ws in warm] == ["batch x2, lr x sqrt2, warmup 100"]


def test_cuda_without_bf16_gets_fp16_and_with_bf16_gets_bf16():
    assert [ws.recipe.precision for ws in warm_starts(BERT, "cuda", bf16_fast=False)] == [
        "fp16", "fp32", "fp16"]
    assert [ws.recipe.precision for ws in warm_starts(BERT, "cuda", bf16_fast=True)] == [
        "bf16", "fp32", "bf16"]


@pytest.mark.parametrize("optimizer", ["adamw", "adam"])
def test_larger_batch_scales_adam_lr_by_sqrt_of_batch_ratio_with_warmup(optimizer):
    baseline = BERT.replace(optimizer=optimizer)
    [ws] = warm_starts(baseline, "cpu", bf16_fast=False)
    assert ws.recipe.batch_size == 64
    assert math.isclose(ws.recipe.lr, 5e-4 * math.sqrt(2), rel_tol=1e-12)
    assert ws.recipe.warmup_steps == WARMUP_STEPS == 100
    assert ws.recipe.replace(batch_size=32, lr=5e-4, warmup_steps=0) == baseline  # nothing else
    assert "Malladi" in ws.rule and "square root" in ws.rule


def test_larger_batch_scales_sgd_lr_linearly_with_warmup():
    [ws] = warm_starts(SGD, "cpu", bf16_fast=False)
    assert (ws.recipe.batch_size, ws.recipe.warmup_steps) == (64, 100)
    assert math.isclose(ws.recipe.lr, 0.2, rel_tol=1e-12)
    assert ws.name == "batch x2, lr x2, warmup 100"
    assert "Goyal" in ws.rule and "linearly" in ws.rule


def test_a_longer_baseline_warmup_is_kept():
    [ws] = warm_starts(BERT.replace(warmup_steps=300), "cpu", bf16_fast=False)
    assert ws.recipe.warmup_steps == 300
    assert ws.name == "batch x2, lr x sqrt2"


def test_precision_rule_cites_mixed_precision():
    for device, fast in (("cpu", True), ("cuda", False)):
        assert "Micikevicius" in warm_starts(BERT, device, bf16_fast=fast)[0].rule


def test_the_baseline_is_never_a_warm_start_and_duplicates_are_dropped():
    baseline = BERT.replace(precision="bf16")  # the precision rule would return the baseline
    warm = warm_starts(baseline, "cpu", bf16_fast=True)
    # the precision rule is the baseline; "both" equals the batch rule: one left
    assert [ws.name for ws in warm] == ["batch x2, lr x sqrt2, warmup 100"]
    assert warm[0].recipe.precision == "bf16"


@pytest.mark.parametrize("baseline", [
    BERT, SGD, Recipe(batch_size=1, lr=1e-3), BERT.replace(precision="fp16"),
    BERT.replace(precision="bf16", warmup_steps=500), Recipe(batch_size=100, lr=3e-2,
                                                             optimizer="sgd")])
@pytest.mark.parametrize(("device", "fast"), [("cpu", True), ("cpu", False), ("cuda", False)])
def test_no_warm_start_is_the_baseline_or_a_duplicate(baseline, device, fast):
    warm = warm_starts(baseline, device, bf16_fast=fast)
    recipes = [ws.recipe for ws in warm]
    assert warm and baseline not in recipes
    assert len(set(recipes)) == len(recipes)
    assert len({ws.name for ws in warm}) == len(warm)
    assert all(ws.baseline == baseline for ws in warm)


def test_a_rule_giving_an_invalid_recipe_is_dropped():
    baseline = Recipe(lr=1.5e308)  # x sqrt2 overflows to inf: not a valid learning rate
    assert [ws.name for ws in warm_starts(baseline, "cpu", bf16_fast=True)] == ["bf16"]


# -- snapping into a space ------------------------------------------------------------------

SPACE_HEAD = "knobs:\n  precision: {choices: [fp32, bf16]}\n"


def snap(ws, text):
    return snap_to_space(ws, parse_space(text))


def batch_rule(baseline=BERT):
    return by_name(warm_starts(baseline, "cpu", bf16_fast=False))[
        "batch x2, lr x2, warmup 100" if baseline.optimizer == "sgd"
        else "batch x2, lr x sqrt2, warmup 100"]


def test_warm_starts_inside_a_space_are_kept_as_they_are():
    space = load_space(SPACES_DIR / "bert.yaml")
    warm = warm_starts(BERT, "cpu", bf16_fast=True)
    assert [snap_to_space(ws, space) for ws in warm] == warm


def test_a_batch_between_choices_snaps_to_the_nearest_and_the_lr_follows():
    ws = snap(batch_rule(), "knobs:\n  batch_size: {choices: [16, 32, 48, 256]}\n"
                            "  lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
                            "  warmup_steps: {choices: [0, 100]}\n")
    assert ws.recipe.batch_size == 48
    assert math.isclose(ws.recipe.lr, 5e-4 * math.sqrt(1.5), rel_tol=1e-12)
    assert ws.recipe.warmup_steps == 100
    assert ws.name == "batch x1.5, lr x1.22, warmup 100"
    assert "Moved into the search space: batch_size 64 -> 48" in ws.rule


def test_a_tie_between_choices_keeps_the_rules_direction():
    # 64 is a factor 2 from both 32 (the baseline's) and 128: 128 keeps "a larger batch"
    ws = snap(batch_rule(), "knobs:\n  batch_size: {choices: [16, 32, 128]}\n"
                            "  lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
                            "  warmup_steps: {choices: [0, 100]}\n")
    assert (ws.recipe.batch_size, ws.name) == (128, "batch x4, lr x2, warmup 100")
    assert math.isclose(ws.recipe.lr, 1e-3, rel_tol=1e-12)


def test_warmup_snaps_to_the_nearest_choice():
    ws = snap(batch_rule(), "knobs:\n  batch_size: {choices: [32, 64]}\n"
                            "  lr: {low: 1.0e-4, high: 1.0e-2}\n"
                            "  warmup_steps: {choices: [0, 10, 60, 300]}\n")
    assert ws.recipe.warmup_steps == 60


@pytest.mark.parametrize("log", ["true", "false"])
def test_ranges_clip_to_their_bounds(log):
    ws = snap(batch_rule(), f"knobs:\n  batch_size: {{low: 8, high: 48}}\n"
                            f"  lr: {{low: 1.0e-4, high: 6.0e-4, log: {log}}}\n"
                            f"  warmup_steps: {{low: 0, high: 80, step: 20}}\n")
    assert ws.recipe.batch_size == 48
    assert ws.recipe.lr == 6e-4  # 5e-4 x sqrt(1.5) = 6.1e-4, clipped
    assert ws.recipe.warmup_steps == 80


def test_the_variant_that_applies_is_the_one_snapped_to():
    text = ("knobs:\n  optimizer: {choices: [adamw, sgd]}\n"
            "  lr: {low: 1.0e-4, high: 1.0e-3, log: true, when: {optimizer: adamw}}\n"
            "  lr@sgd: {low: 0.01, high: 0.15, log: true, when: {optimizer: sgd}}\n"
            "  batch_size: {choices: [32, 64]}\n  warmup_steps: {choices: [0, 100]}\n")
    ws = snap(batch_rule(SGD), text)
    assert (ws.recipe.lr, ws.recipe.batch_size) == (0.15, 64)


def test_a_knob_the_space_does_not_vary_keeps_the_baseline_value():
    ws = snap(batch_rule(), "knobs:\n  batch_size: {choices: [32, 64]}\n"
                            "  lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    assert ws.recipe.warmup_steps == 0
    assert ws.name == "batch x2, lr x sqrt2"


def test_none_when_the_rule_cannot_change_anything_in_the_space():
    bf16, batch, both = warm_starts(BERT, "cpu", bf16_fast=True)
    fp32_only = "knobs:\n  precision: {choices: [fp32]}\n  batch_size: {choices: [32, 64]}\n"
    assert snap(bf16, fp32_only) is None
    # the batch cannot change: its lr and warmup go with it, and only the baseline is left
    fixed_batch = "knobs:\n  batch_size: {value: 32}\n  lr: {low: 1.0e-4, high: 1.0e-2}\n"
    assert snap(batch, fixed_batch) is None
    assert snap(both, SPACE_HEAD + "  batch_size: {value: 32}\n").recipe == bf16.recipe


def test_none_when_the_result_is_outside_the_space_anyway():
    # the space holds no AdamW, so neither the baseline nor any change of it lies inside
    text = SPACE_HEAD + "  optimizer: {choices: [sgd]}\n"
    assert all(snap(ws, text) is None for ws in warm_starts(BERT, "cpu", bf16_fast=True))


def test_snapped_recipes_are_reachable_points_and_snap_all_drops_duplicates():
    space = parse_space(SPACE_HEAD + "  batch_size: {value: 32}\n")
    snapped = snap_all_to_space(warm_starts(BERT, "cpu", bf16_fast=True), space)
    assert [ws.name for ws in snapped] == ["bf16"]  # "both" collapsed onto "bf16"
    space, baseline = load_space(SPACES_DIR / "mnist.yaml"), SGD.replace(lr=0.4)
    snapped = snap_all_to_space(warm_starts(baseline, "cuda", bf16_fast=False), space)
    assert [ws.name for ws in snapped] == [
        "fp16", "batch x2, lr x1.25, warmup 100", "fp16, batch x2, lr x1.25, warmup 100"]
    for ws in snapped:  # lr 0.8 clipped to lr@sgd's high, 0.5
        assert space.to_recipe(space.point_for(ws.recipe), baseline) == ws.recipe
