"""The warm start: recipes a search tries right after the baseline, from general rules.

Each rule is a change to the baseline recipe that holds for any task, because it follows from
how the hardware or the optimizer works, not from measurements on one task. The rules are
written once here and applied alike to built-in and user tasks, so nothing a search reports was
written in by hand for the task it ran on. Every rule is named; the name is derived from what
the recipe changes, so it stays true after ``snap_to_space`` moves a value into a search space.

The rules, in this order (a rule whose recipe is the baseline, or invalid, or equal to an
earlier one, is dropped):

1. **precision**: the 16-bit precision the device computes natively (``native_precision``):
   bf16 where it is fast, fp16 on a CUDA GPU without bf16; none on a CPU without fast bf16
   (emulated bf16 is slower than fp32). A baseline already in it gets no precision rule.
2. **larger batch**: ``batch_size x 2``; learning rate ``x sqrt(2)`` for Adam/AdamW (``x 2`` for
   SGD); linear warmup over ``max(baseline warmup, WARMUP_STEPS)`` optimizer steps.
3. **both**: rule 1's precision with rule 2's batch, learning rate and warmup.

This module is pure (no torch, Ray or Optuna): the caller passes what it knows of the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from autotune.errors import ConfigError
from autotune.recipe import Recipe
from autotune.space import Knob, SearchSpace

BATCH_FACTOR = 2
"""The larger-batch rule multiplies the baseline's batch size by this."""

LR_BATCH_EXPONENT = {"adam": 0.5, "adamw": 0.5, "sgd": 1.0}
"""How the learning rate follows the batch: ``lr x (new batch / old batch) ** exponent``.
Square root for the Adam family: their update's noise scales like SGD's with a squared
learning rate, so keeping it equal needs ``lr x sqrt(k)`` for a ``k`` times larger batch
(Hoffer et al. 2017; Malladi et al. 2022, "On the SDEs and scaling rules for adaptive gradient
algorithms"). Linear for SGD (Goyal et al. 2017, "Accurate, large minibatch SGD")."""

WARMUP_STEPS = 100
"""Optimizer steps of linear warmup that come with a raised learning rate. Warmup exists
because the first updates are the largest and least reliable (gradients of a random model, and
for Adam a second-moment estimate built from few gradients: Goyal et al. 2017; Liu et al. 2020,
RAdam), so a higher learning rate is reached gradually. 100 steps spans that early phase while
costing little in a short trial of several hundred steps (the ramp loses about 50 steps' worth
of progress); the untuned rule for full-length Adam runs, ``2 / (1 - beta2)`` = 2000 steps
(Ma & Yarats 2021), would take up a whole trial."""

_RULE_PRECISION = {
    "bf16": (
        "bf16 autocast where the device computes bf16 natively: matmuls at 16 bits run faster "
        "and move half the bytes, and bf16 keeps fp32's exponent range so no loss scaling is "
        "needed (Kalamkar et al. 2019; mixed precision, Micikevicius et al. 2018)."
    ),
    "fp16": (
        "fp16 autocast with a loss scaler on a CUDA GPU without bf16: tensor cores run fp16 "
        "matmuls several times faster than fp32 and dynamic loss scaling keeps small gradients "
        "from underflowing (mixed precision, Micikevicius et al. 2018)."
    ),
}
_RULE_BATCH = {
    0.5: (
        "A {k}x larger batch uses the device better per example; for Adam-family optimizers "
        "the learning rate scales by the square root of the batch ratio to keep the update "
        "noise equal (Hoffer et al. 2017; Malladi et al. 2022), reached by a {w}-step linear "
        "warmup so the first, least reliable updates stay small (Goyal et al. 2017)."
    ),
    1.0: (
        "A {k}x larger batch uses the device better per example; for SGD the learning rate "
        "scales linearly with the batch, reached by a {w}-step linear warmup so the first, "
        "least reliable updates stay small (linear scaling + warmup, Goyal et al. 2017)."
    ),
}


@dataclass(frozen=True)
class WarmStart:
    """One warm-start recipe and the general rule that made it."""

    name: str
    """Short, shown in the trial's progress line: what changes, e.g. ``bf16``,
    ``batch x2, lr x sqrt2, warmup 100`` (derived from the recipe, so always true)."""
    rule: str
    """One sentence: the general rule, why it holds, and its usual source."""
    recipe: Recipe
    """The recipe to try: the baseline with the rule's changes."""
    baseline: Recipe
    """The recipe the rule changed; ``snap_to_space`` compares against it."""
    lr_batch_exponent: float | None = None
    """For a rule that scales the batch: the learning rate is ``baseline lr x (batch ratio) **
    this``, so ``snap_to_space`` keeps it in step when it moves the batch. None otherwise."""


def native_precision(device_type: str, *, bf16_fast: bool) -> str | None:
    """The 16-bit precision worth trying on this device, or None.

    ``bf16_fast``: on CUDA pass ``torch.cuda.is_bf16_supported()``, on a CPU
    ``autotune.hardware.bf16_is_fast("cpu")``. bf16 where fast; else fp16 on a CUDA GPU
    (tensor cores); else none, since an emulated 16-bit format is slower than fp32.
    """
    if bf16_fast:
        return "bf16"
    if device_type.split(":", 1)[0] == "cuda":
        return "fp16"
    return None


def warm_starts(baseline: Recipe, device_type: str, *, bf16_fast: bool) -> list[WarmStart]:
    """The warm start for ``baseline`` on a device: the rules in the module docstring, in that
    order, without the baseline itself, invalid recipes or duplicates.

    The recipes may lie outside a search space; ``snap_all_to_space`` moves them in.
    """
    precision = native_precision(device_type, bf16_fast=bf16_fast)
    exponent = LR_BATCH_EXPONENT[baseline.optimizer]
    warmup = max(baseline.warmup_steps, WARMUP_STEPS)
    larger = {
        "batch_size": baseline.batch_size * BATCH_FACTOR,
        "lr": baseline.lr * BATCH_FACTOR**exponent,
        "warmup_steps": warmup,
    }
    batch_rule = _RULE_BATCH[exponent].format(k=BATCH_FACTOR, w=warmup)
    candidates: list[tuple[str, dict[str, Any], float | None]] = [(batch_rule, larger, exponent)]
    if precision is not None:
        both = (
            f"{precision} and the {BATCH_FACTOR}x batch together, since each rule holds on its "
            "own and they cut different costs (time per matmul, optimizer steps per epoch), so "
            "their gains compound."
        )
        candidates = [
            (_RULE_PRECISION[precision], {"precision": precision}, None),
            *candidates,
            (both, {"precision": precision, **larger}, exponent),
        ]
    out: list[WarmStart] = []
    for rule, changes, lr_exponent in candidates:
        try:
            recipe = baseline.replace(**changes)
        except ConfigError:
            continue  # e.g. a learning rate that overflows: not a recipe to try
        ws = WarmStart(describe_change(baseline, recipe), rule, recipe, baseline, lr_exponent)
        _append_new(out, ws, baseline)
    return out


def snap_to_space(ws: WarmStart, space: SearchSpace) -> WarmStart | None:
    """``ws`` moved into ``space``, or None if it cannot be.

    Each knob the rule changed moves to the nearest value the space allows for it (the
    definition that applies, ``lr@sgd`` for SGD): for choices the closest one (numbers compared
    by ratio, so 64 is as near 32 as 128; a tie goes to the value farther from the baseline,
    which keeps the rule's direction); for a range, clipped to ``[low, high]`` (and to its
    ``step`` grid). A knob the space does not let vary keeps the baseline's value. When the batch
    moves, the learning rate follows it by the rule's exponent; when the batch cannot change
    at all, the rule's learning rate and warmup are dropped with it.

    Returns None when the result still lies outside the space, is invalid, or is the baseline.
    """
    base = ws.baseline
    wanted = ws.recipe.to_dict()
    values = _snap_once(wanted, space, base)
    if ws.lr_batch_exponent is not None:
        if values["batch_size"] == base.batch_size:
            for name in ("batch_size", "lr", "warmup_steps"):
                values[name] = getattr(base, name)
        else:
            ratio = values["batch_size"] / base.batch_size
            values["lr"] = base.lr * ratio**ws.lr_batch_exponent
            values = _snap_once(values, space, base)
    try:
        recipe = Recipe.from_dict(values)
        point = space.point_for(recipe)
    except ConfigError:
        return None
    if recipe == base or space.to_recipe(point, base) != recipe:
        return None
    if recipe == ws.recipe:
        return ws
    moved = ", ".join(
        f"{name} {_fmt(wanted[name])} -> {_fmt(value)}"
        for name, value in recipe.to_dict().items()
        if value != wanted[name]
    )
    rule = f"{ws.rule} Moved into the search space: {moved}."
    return WarmStart(describe_change(base, recipe), rule, recipe, base, ws.lr_batch_exponent)


def snap_all_to_space(warm: Iterable[WarmStart], space: SearchSpace) -> list[WarmStart]:
    """Every warm start moved into ``space`` (``snap_to_space``), in order, without those that
    cannot be and without duplicates (two rules can land on one recipe once snapped)."""
    out: list[WarmStart] = []
    for ws in warm:
        snapped = snap_to_space(ws, space)
        if snapped is not None:
            _append_new(out, snapped, ws.baseline)
    return out


def describe_change(baseline: Recipe, recipe: Recipe) -> str:
    """A short name for what ``recipe`` changes from ``baseline``: ``bf16, batch x2, lr x sqrt2,
    warmup 100``. Batch and learning rate as ratios, other knobs as values."""
    parts = []
    first = ("precision", "batch_size", "lr", "warmup_steps")
    names = [*first, *(name for name in recipe.to_dict() if name not in first)]
    for name in names:
        value, old = getattr(recipe, name), getattr(baseline, name)
        if value == old:
            continue
        if name == "precision":
            parts.append(str(value))
        elif name in ("batch_size", "lr"):
            parts.append(f"{'batch' if name == 'batch_size' else 'lr'} {_ratio(value / old)}")
        elif name == "warmup_steps":
            parts.append(f"warmup {value}")
        else:
            parts.append(f"{name} {_fmt(value)}")
    return ", ".join(parts)


# -- helpers --------------------------------------------------------------------------------


def _append_new(out: list[WarmStart], ws: WarmStart, baseline: Recipe) -> None:
    """Append ``ws`` unless it is the baseline or a recipe already in ``out``."""
    if ws.recipe != baseline and all(ws.recipe != other.recipe for other in out):
        out.append(ws)


def _snap_once(values: Mapping[str, Any], space: SearchSpace, base: Recipe) -> dict[str, Any]:
    """``values`` with each changed knob moved to the nearest value of the definition that
    applies (conditions read in file order, as ``SearchSpace.point_for`` does), and every knob
    the space does not set back at the baseline's value."""
    out = dict(values)
    set_by_space: set[str] = set()
    for knob in space.knobs:
        if not knob.applies(out):
            continue
        set_by_space.add(knob.knob)
        value, old = out[knob.knob], getattr(base, knob.knob)
        if value != old and not knob.contains(value):
            out[knob.knob] = _nearest(knob, value, old)
    for name in out:
        if name not in set_by_space:
            out[name] = getattr(base, name)
    return out


def _nearest(knob: Knob, value: Any, old: Any) -> Any:
    """The value ``knob`` allows nearest ``value``; ``old`` (the baseline's) when there is no
    notion of near (a string or bool not among the choices)."""
    if knob.choices is None:
        assert knob.low is not None and knob.high is not None
        clipped = min(max(value, knob.low), knob.high)
        if knob.step is not None:
            steps = round((clipped - knob.low) / knob.step)
            clipped = min(knob.low + steps * knob.step, knob.high)
        return knob.kind(clipped)
    numbers = [c for c in knob.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not numbers:
        return old
    by_ratio = value > 0 and all(c > 0 for c in numbers)

    def distance(c: float) -> float:
        return abs(math.log(c / value)) if by_ratio else abs(c - value)

    def farther_from_baseline(c: float) -> float:
        return -abs(math.log(c / old)) if by_ratio and old > 0 else -abs(c - old)

    return min(numbers, key=lambda c: (round(distance(c), 12), farther_from_baseline(c)))


def _ratio(r: float) -> str:
    """``x2``, ``x sqrt2``, ``/2`` or ``x1.23``: a ratio as a person writes it."""
    for k in range(2, 17):
        if math.isclose(r, k):
            return f"x{k}"
        if math.isclose(r, 1 / k):
            return f"/{k}"
        if math.isclose(r * r, k) and not math.isqrt(k) ** 2 == k:
            return f"x sqrt{k}"
        if math.isclose(r * r, 1 / k) and not math.isqrt(k) ** 2 == k:
            return f"/sqrt{k}"
    return f"x{r:.3g}"


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
