"""The optimizer and learning-rate knobs: which optimizer, and the warmup/decay schedule."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from autotune.recipe import Recipe

FINAL_LR_FRACTION = 0.1
"""A decaying schedule ends at this fraction of the peak learning rate."""


def build_optimizer(params: Iterator[nn.Parameter] | list, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``params`` at its peak learning rate, in the implementation
    ``fused_optimizer`` names (``implementation_kwargs``)."""
    params = list(params)
    impl = implementation_kwargs(recipe.fused_optimizer)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
            **impl,
        )
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **impl)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, **impl)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def implementation_kwargs(fused_optimizer: str) -> dict[str, bool]:
    """The keyword that selects torch's optimizer implementation (SGD, Adam and AdamW all take
    it, on CPUs and GPUs): ``default`` passes none, so torch picks its default (a loop over the
    parameters on a CPU, ``foreach`` on a GPU); ``foreach`` applies each operation to all
    parameters at once; ``fused`` runs the whole update in one kernel per device and dtype.
    All three compute the same update up to float rounding."""
    if fused_optimizer == "default":
        return {}
    if fused_optimizer in ("foreach", "fused"):
        return {fused_optimizer: True}
    raise ValueError(f"unknown optimizer implementation {fused_optimizer!r}")


def lr_factor(step: int, recipe: Recipe) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warmup from ``1/warmup`` to 1 over ``warmup_steps`` steps, then constant, or linear or
    cosine decay to ``FINAL_LR_FRACTION`` at ``decay_steps``, constant after.
    """
    warmup = recipe.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if recipe.schedule == "constant" or step >= recipe.decay_steps:
        return 1.0 if recipe.schedule == "constant" else FINAL_LR_FRACTION
    progress = (step - warmup) / max(1, recipe.decay_steps - warmup)
    if recipe.schedule == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step scheduler applying ``lr_factor``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, recipe))
