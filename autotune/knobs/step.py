"""THE training step: one optimizer step of a recipe, shared by every caller.

A search trial (``autotune.train``, every parallel mode but DeepSpeed's engine, whose thin
variant calls ``micro_batch_loss`` and ``loss_value`` from here), ``autotune.configure``
(``autotune.apply``) and the memory estimator's trace (``autotune.memory``) all step through
``optimizer_step``: gradient accumulation, autocast, fp16 loss scaling, DDP's ``no_sync``,
the finite check, gradient clipping, the optimizer and scheduler steps, and the pruning
masks. The memory
prediction is therefore of the step that trains, not of a copy that must be kept in line.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from autotune.knobs.clipping import clip_gradients
from autotune.knobs.device import channels_last_batch
from autotune.knobs.precision import autocast_context
from autotune.knobs.pruning import apply_masks
from autotune.recipe import Recipe
from autotune.tasks import Batch

LossFn = Callable[[nn.Module, Batch], torch.Tensor]
"""``loss_fn(model, micro_batch) -> mean loss``, like ``Task.loss``."""
PhaseFn = Callable[[str], None]
"""Told ``forward_backward`` before each micro-batch and ``optimizer_step`` before the update
(``autotune.memory.TensorTracker.phase`` keeps each phase's peak apart)."""
NormFn = Callable[[torch.Tensor], None]
"""Told the global gradient norm before clipping, as a tensor (reading it is the caller's
choice: on a GPU, ``.item()`` waits for the device)."""


class Diverged(Exception):
    """The loss became NaN or infinite: the recipe diverged (a trial ends as *diverged*)."""


def loss_value(loss: torch.Tensor, step: int, strict: bool = True) -> float:
    """The loss as a float. ``strict``: raise ``Diverged`` when it is NaN or infinite;
    otherwise return it as it is (NaN/inf), for workers that must decide together."""
    value = float(loss.detach())
    if strict and not math.isfinite(value):
        raise Diverged(f"loss became {value} at optimizer step {step}")
    return value


def micro_batch_loss(model: nn.Module, loss_fn: LossFn, batch: Batch, precision: str,
                     device_type: str) -> torch.Tensor:
    """One micro-batch's mean loss, computed under the recipe's autocast."""
    with autocast_context(precision, device_type):
        return loss_fn(model, batch)


def optimizer_step(
    model: nn.Module,
    loss_fn: LossFn,
    micro_batches: Sequence[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    recipe: Recipe,
    device_type: str,
    *,
    scaler: torch.amp.GradScaler | None = None,
    masks: dict[nn.Parameter, torch.Tensor] | None = None,
    skip_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    strict: bool = True,
    read_values: bool = True,
    phase: PhaseFn | None = None,
    channels_last: bool = False,
    grad_norm: NormFn | None = None,
    lazy: bool = False,
) -> float | torch.Tensor:
    """One optimizer step over ``micro_batches`` (gradient accumulation), applying precision,
    loss scaling, gradient clipping and pruning masks. Returns the mean loss; raises
    ``Diverged`` on NaN/inf.

    ``lazy=True`` returns the mean loss as a detached 0-dim float32 tensor on the device and
    checks nothing: reading a loss (``float``) waits for a GPU to finish the step, so the
    training loop sums these tensors and reads the sum only at evaluation points
    (``autotune.train.loop``), catching a NaN/inf within one evaluation interval. Nothing
    else in the step waits for the device, except fp16's loss scaler with an optimizer that
    is not fused (``GradScaler.step`` reads whether the gradients hold inf).

    Each micro-batch's mean loss is divided by their count, so N micro-batches of B examples
    give the gradient of one batch of N*B examples. ``skip_sync`` (DDP's ``no_sync``) wraps all
    but the last micro-batch, so gradients are averaged across workers once per step. With
    ``strict=False`` a NaN/inf loss does not raise but makes the returned loss NaN: workers of
    a parallel run must leave the step together, so they decide after it, collectively.

    ``read_values=False`` is for fake tensors (the memory trace), which have no values: the
    loss is not read (returns NaN) and an fp16 step is not skipped on inf gradients (the
    scaler's check reads them). ``phase`` marks the step's phases for a memory tracker.

    ``recipe.grad_clip`` > 0 clips once, on the summed gradient of all micro-batches, after
    DDP's all-reduce and after fp16's unscaling (``_update``); ``grad_norm`` is told the norm
    before clipping. ``channels_last`` puts each micro-batch's 4-D inputs in that memory
    format (pass it when the model's weights were converted: ``to_channels_last``).
    """
    n = len(micro_batches)
    total = 0.0
    lazy_total: torch.Tensor | None = None
    step = int(getattr(scheduler, "last_epoch", 0)) if scheduler is not None else 0
    for i, batch in enumerate(micro_batches):
        if phase is not None:
            phase("forward_backward")
        last = i == n - 1
        if channels_last:
            batch = channels_last_batch(batch)
        with (skip_sync() if skip_sync is not None and not last else contextlib.nullcontext()):
            loss = micro_batch_loss(model, loss_fn, batch, recipe.precision, device_type)
            if read_values and lazy:
                value = loss.detach().float()
                lazy_total = value if lazy_total is None else lazy_total + value
            elif read_values:
                total += loss_value(loss, step, strict)
            scaled = loss / n
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            del loss, scaled  # not held through the next micro-batch's forward pass
    if phase is not None:
        phase("optimizer_step")
    _update(optimizer, scaler, read_values, recipe.grad_clip, grad_norm)
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    apply_masks(masks)
    if lazy_total is not None:
        return lazy_total / n
    return total / n if read_values else math.nan


def _update(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
            read_values: bool, max_norm: float, grad_norm: NormFn | None) -> None:
    """The optimizer's update; with a loss scaler, on unscaled gradients, skipped (when values
    can be read) if they hold inf/NaN, and the scale adjusted after. With ``max_norm`` > 0 the
    gradients of the optimizer's parameters are clipped first, unscaled (a scaled gradient's
    norm is the loss scale times too large)."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_norm > 0:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = clip_gradients(params, max_norm)
        if grad_norm is not None:
            grad_norm(norm)
    if scaler is None:
        optimizer.step()
        return
    if read_values:
        scaler.step(optimizer)
    else:
        optimizer.step()
    scaler.update()
