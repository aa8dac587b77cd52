"""The gradient-clipping knob: the global gradient norm scaled down to ``grad_clip``.

``clip_gradients`` is called by THE training step (``autotune.knobs.step``) once per optimizer
step, on the summed gradient of all micro-batches, after DDP's all-reduce (the gradients are
already the workers' average) and after fp16's ``GradScaler.unscale_`` (the norm is of the true
gradient, not of the scaled one). Under FSDP2 the gradients are ``DTensor`` shards; the norm is
reduced over the shards, so every worker scales by the same global norm. DeepSpeed's engine
clips itself, from its config's ``gradient_clipping`` (``autotune.knobs.modes``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients of ``parameters`` in place so that their global L2 norm is at most
    ``max_norm``; returns the norm before clipping, as a tensor on the gradients' device.

    The norm stays a tensor (no ``.item()``): reading it on a GPU would wait for the device at
    every step, so a caller reads it only when it reports. Parameters without a gradient are
    left out. A non-finite norm (fp16 overflow) is returned as it is; the loss scaler then
    skips the step.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
    if hasattr(norm, "full_tensor"):
        # FSDP2: a DTensor holding each worker's partial norm; one all-reduce of a scalar makes
        # it the global norm, the same on every worker, as a plain tensor.
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
