"""The knobs that change how kernels run, not what the step computes: TF32 matmuls and the
channels-last memory format; and which of a recipe's knobs cannot act in a given run.

- ``set_tf32``: TF32 matmuls for the process (CUDA only; on a CPU a TF32 recipe is infeasible,
  ``autotune.knobs.modes.unsupported_reason``, so a search never runs it there).
- ``to_channels_last`` / ``channels_last_batch``: convolution weights and 4-D inputs in NHWC
  order. Both CPUs (oneDNN) and GPUs (cuDNN, tensor cores) convolve faster in it. A model
  without 4-D weights is left alone: the knob is then a recorded no-op, not an error.
- ``inactive_knobs``: the knobs a recipe sets that do nothing in this run, each with why, so
  a result never credits a knob that did not act.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from autotune.recipe import ZERO_MODES, Recipe

TF32_CAPABILITY = (8, 0)
"""CUDA compute capability from which GPUs have TF32 tensor cores (Ampere)."""


def set_tf32(enabled: bool) -> None:
    """TF32 matmuls for this process when ``enabled``; torch's defaults when not.

    Enabled: fp32 CUDA matmuls run in TF32 (``torch.backends.cuda.matmul.allow_tf32``, what
    ``torch.set_float32_matmul_precision("high")`` sets for CUDA; CPU matmuls are left alone).
    cuDNN convolutions use TF32 in both cases, as torch does by default. The setting is
    process-wide, so a run sets it either way: a process that runs several recipes one after
    another never carries one recipe's choice into the next.
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = True


def tf32_enabled() -> bool:
    """Whether fp32 CUDA matmuls of this process run in TF32."""
    return bool(torch.backends.cuda.matmul.allow_tf32)


def has_4d_weights(model: nn.Module) -> bool:
    """Whether ``model`` has a 4-D parameter (a 2-D convolution's weight): the only tensors
    the channels-last format changes."""
    return any(p.dim() == 4 for p in model.parameters())


def to_channels_last(model: nn.Module) -> bool:
    """Put ``model``'s 4-D weights (and buffers) in the channels-last memory format, in place.
    Returns whether it acted: False, and nothing changed, for a model without 4-D weights."""
    if not has_4d_weights(model):
        return False
    model.to(memory_format=torch.channels_last)
    return True


def channels_last_batch(batch: object) -> object:
    """``batch`` with every 4-D floating-point tensor in the channels-last format (images:
    ``N, C, H, W``), the rest (labels, masks, token ids) as it is. Walks lists, tuples and
    mappings, so any batch structure a task's collate function makes is kept."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return {key: channels_last_batch(value) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(channels_last_batch(item) for item in batch)
    return batch


def inactive_knobs(recipe: Recipe, model: nn.Module, device: torch.device) -> list[str]:
    """The knobs ``recipe`` sets that cannot act on ``model`` on ``device``, one line each
    (``knob: why``); empty when every knob it sets acts.

    - ``channels_last`` on a model without 4-D weights (no 2-D convolution);
    - ``tf32`` on a CUDA GPU older than Ampere (no TF32 units; torch ignores the setting);
    - ``fused_optimizer`` with ZeRO offload of an Adam-family optimizer, which DeepSpeed's own
      CPU Adam runs (one vectorised kernel of its own, whatever the knob says).
    """
    out: list[str] = []
    if recipe.channels_last and not has_4d_weights(model):
        out.append("channels_last: the model has no 4-D weights (no 2-D convolution), so no "
                   "tensor changes its memory format")
    if recipe.tf32 and device.type == "cuda" \
            and torch.cuda.get_device_capability(device) < TF32_CAPABILITY:
        out.append(f"tf32: {torch.cuda.get_device_name(device)} has no TF32 units (Ampere and "
                   "newer have them)")
    if recipe.fused_optimizer != "default" and recipe.offload \
            and recipe.parallelism in ZERO_MODES and recipe.optimizer in ("adam", "adamw"):
        out.append(f"fused_optimizer: with offload, DeepSpeed's CPU Adam steps the optimizer; "
                   f"{recipe.fused_optimizer!r} applies to torch's optimizers only")
    return out
