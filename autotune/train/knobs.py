"""Each recipe knob as a pure function that can be tested on a tiny model without a trainer.

The training loop (``autotune.train.loop``) only decides when to call these.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from autotune.recipe import Recipe

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# -- precision ------------------------------------------------------------------------------


def autocast_context(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """Autocast for ``bf16``/``fp16`` (matmuls and convolutions run in that dtype; weights and
    optimizer state stay fp32); a no-op for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=_DTYPES[precision])


def make_grad_scaler(precision: str, device_type: str) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16, whose small exponent range underflows small gradients;
    bf16 has fp32's range and needs none."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device_type)


# -- optimizer and learning-rate schedule ---------------------------------------------------


def build_optimizer(params: Iterator[nn.Parameter] | list, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``params`` at its peak learning rate."""
    params = list(params)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


FINAL_LR_FRACTION = 0.1
"""A decaying schedule ends at this fraction of the peak learning rate."""


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


# -- magnitude pruning ----------------------------------------------------------------------

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(model: nn.Module) -> list[nn.Parameter]:
    """Weight matrices of linear and convolution layers: what magnitude pruning removes.

    Embeddings, norms and biases are left dense: they are small or lookup tables.
    """
    return [m.weight for m in model.modules() if isinstance(m, PRUNABLE)]


def prune_by_magnitude(model: nn.Module, ratio: float) -> dict[nn.Parameter, torch.Tensor]:
    """Zero the ``ratio`` fraction of smallest-magnitude entries of each prunable weight.

    Returns the keep-masks, which ``apply_masks`` re-applies after every optimizer step so the
    pruned weights stay zero through training. No masks for ratio 0.
    """
    if ratio <= 0:
        return {}
    masks: dict[nn.Parameter, torch.Tensor] = {}
    with torch.no_grad():
        for weight in prunable_weights(model):
            n_prune = int(round(ratio * weight.numel()))
            if n_prune == 0:
                continue
            flat = weight.detach().abs().flatten()
            cutoff_idx = torch.topk(flat, n_prune, largest=False).indices
            keep = torch.ones_like(flat, dtype=torch.bool)
            keep[cutoff_idx] = False
            mask = keep.view_as(weight)
            weight.mul_(mask)
            masks[weight] = mask
    return masks


def apply_masks(masks: dict[nn.Parameter, torch.Tensor]) -> None:
    """Re-zero pruned weights (after an optimizer step moved them)."""
    if not masks:
        return
    with torch.no_grad():
        for weight, mask in masks.items():
            # A sharded (FSDP2 DTensor) weight holds its mask's matching shard.
            local = weight.to_local() if hasattr(weight, "to_local") else weight
            local.mul_(mask)


def sparsity(weights: list[torch.Tensor]) -> float:
    """Fraction of exact zeros over ``weights``."""
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / total if total else 0.0
