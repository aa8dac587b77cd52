"""Each recipe knob as a pure function that can be tested on a tiny model without a trainer.

The training loop (``autotune.train.loop``) only decides when to call these.
"""

from __future__ import annotations

import contextlib
import functools
import math
import types
from collections.abc import Iterator
from typing import Any

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


# -- activation checkpointing --------------------------------------------------------------


def apply_checkpointing(model: nn.Module) -> str:
    """Turn on activation checkpointing in ``model`` (in place); returns how, in words, or
    ``""`` when the model has no blocks to checkpoint (then nothing changes).

    A transformers model uses its own ``activation_checkpointing_enable`` (named
    ``gradient_checkpointing_enable`` before transformers 5), non-reentrant, which checkpoints
    each transformer layer. Any other model has each block of its first
    ``nn.ModuleList`` (the usual container of transformer layers) run under
    ``torch.utils.checkpoint`` (non-reentrant): only the block's inputs are kept for the
    backward pass, which recomputes the block's forward. Parameter names do not change (the
    block's ``forward`` is wrapped, not the block), so pruning masks, FSDP sharding and state
    dicts see the same model. Checkpointing only acts in training mode.
    """
    if getattr(model, "supports_gradient_checkpointing", False):
        kwargs = {"use_reentrant": False}
        config = getattr(model, "config", None)
        if getattr(config, "use_cache", False):
            config.use_cache = False  # a generation cache cannot be checkpointed (transformers
            # turns it off itself, with a message per model)
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            return "transformers activation_checkpointing_enable"
        if hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            return "transformers gradient_checkpointing_enable"
    blocks = next((m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)), None)
    if blocks is None:
        return ""
    for block in blocks:
        _checkpoint_forward(block)
    return f"torch.utils.checkpoint on {len(blocks)} blocks"


def _checkpoint_forward(block: nn.Module) -> None:
    """Make ``block``'s forward run under non-reentrant ``torch.utils.checkpoint`` (a bound
    method, so a deep copy of the model checkpoints its own blocks)."""
    block.forward = types.MethodType(_checkpointed_forward, block)  # type: ignore[method-assign]


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The class's forward under checkpointing while training with gradients (in evaluation
    there is no backward pass to save memory for)."""
    from torch.utils.checkpoint import checkpoint

    forward = functools.partial(type(self).forward, self)
    if not self.training or not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


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
