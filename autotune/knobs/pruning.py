"""The ``weight_sparsity`` knob: zero the smallest-magnitude weights, and keep them zero while
training (unstructured masks: the same dense matmuls run, so it is a regulariser, not a speed
knob; structured pruning that removes compute is ``autotune.knobs.structured``)."""

from __future__ import annotations

import torch
from torch import nn

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(model: nn.Module) -> list[nn.Parameter]:
    """Weight matrices of linear and convolution layers: what ``weight_sparsity`` masks.

    Embeddings, norms and biases are left dense: they are small or lookup tables.
    """
    return [m.weight for m in model.modules() if isinstance(m, PRUNABLE)]


def prune_by_magnitude(model: nn.Module, ratio: float) -> dict[nn.Parameter, torch.Tensor]:
    """Zero the ``ratio`` fraction of smallest-magnitude entries of each prunable weight.

    ``ratio`` is ``Recipe.weight_sparsity``. Returns the keep-masks, which ``apply_masks``
    re-applies after every optimizer step so the zeroed weights stay zero through training. No
    masks for ratio 0.
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


def apply_masks(masks: dict[nn.Parameter, torch.Tensor] | None) -> None:
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
