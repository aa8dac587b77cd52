"""The activation-checkpointing knob: keep fewer activations, recompute them in backward."""

from __future__ import annotations

import functools
import types
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


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
    forward = functools.partial(type(self).forward, self)
    if not self.training or not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
