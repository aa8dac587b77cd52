"""Apply a recipe to your own training: the same knob functions and step as a search trial.

Two entry points:

- ``configure(recipe, model)`` for a hand-written training loop: it prepares the model as a
  trial does (``autotune.train.parallel.prepare``: to the device, checkpointing, pruning,
  ``torch.compile``, the optimizer, learning-rate scheduler and, for fp16, the grad scaler,
  from the knob functions of ``autotune.knobs``); ``Configured.step`` runs one optimizer step
  through ``autotune.knobs.optimizer_step``, the step a trial takes::

      recipe = autotune.Recipe.load("best_recipe.yaml")
      run = autotune.configure(recipe, model)
      for batch in loader:  # batches of run.batch_size * run.accumulation_steps examples
          loss = run.step(run.split(batch), loss_fn)  # loss_fn(model, micro_batch) -> tensor

- ``fit(recipe, task)`` trains a ``Task`` through ``run_trial``, the code path of a trial
  (its ``TrialResult.compile_seconds`` says how much of the training time was compiling).

Multi-worker recipes (``parallelism`` other than ``single``) are not applied here yet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from autotune.errors import UserError
from autotune.knobs import (
    Diverged,
    LossFn,
    autocast_context,
    distillation_loss,
    optimizer_step,
    unsupported_reason,
)
from autotune.recipe import Recipe
from autotune.tasks import Task
from autotune.train import TrialLimits, TrialResult, pick_device, run_trial
from autotune.train.parallel import Prepared, prepare

__all__ = ["Configured", "LossFn", "configure", "fit"]

@dataclass(frozen=True, eq=False)
class Configured:
    """A model with a recipe applied, and what one optimizer step needs. Built by ``configure``.

    The fields are the live torch objects: step them only through ``step`` (which also advances
    the scheduler and re-applies the ``weight_sparsity`` masks), or read them
    (``scheduler.get_last_lr()``, ``model.state_dict()``).

    Structured pruning (``prune_ratio``) with ``prune_after_steps`` 0 is done by ``configure``:
    the model you get is already smaller. With ``prune_after_steps`` N > 0, the N-th ``step``
    prunes after its update, as a trial does: the model shrinks in place (same object, same
    ``state_dict`` keys, smaller tensors) and ``optimizer``, ``scheduler`` and ``masks`` are
    replaced by new objects carrying the old state, sliced. Read them from this object after
    that step; an optimizer or scheduler you kept a reference to is then stale.
    """

    recipe: Recipe
    """The recipe that was applied."""
    model: nn.Module
    """The model, moved to ``device`` and pruned (the same object that was passed in, with
    the same ``state_dict`` keys). With ``compile`` its ``forward`` is compiled in place: the
    first ``step`` compiles (seconds to minutes, once); wrap evaluations in
    ``autotune.knobs.eager()`` to run them without compiling, as a trial does."""
    optimizer: torch.optim.Optimizer
    """The recipe's optimizer (``autotune.knobs.build_optimizer``) over all of the model's
    parameters."""
    scheduler: torch.optim.lr_scheduler.LRScheduler
    """Warmup and decay per optimizer step (``autotune.knobs.build_scheduler``); ``step``
    advances it."""
    scaler: torch.amp.GradScaler | None
    """Loss scaler for fp16 (``autotune.knobs.make_grad_scaler``); None for fp32 and bf16."""
    masks: dict[nn.Parameter, torch.Tensor]
    """Keep-masks of the ``weight_sparsity`` zeroed weights
    (``autotune.knobs.prune_by_magnitude``); empty without it."""
    device: torch.device
    """Where the model lives; put batches there before ``step``."""
    channels_last: bool = False
    """Whether the model's convolution weights were put in channels-last order
    (``channels_last`` on a model with 4-D weights); ``step`` converts 4-D inputs then."""
    inactive: tuple[str, ...] = ()
    """The recipe's knobs that cannot act on this model and device, ``knob: why`` each (e.g.
    ``channels_last`` on a model without convolutions)."""
    teacher: nn.Module | None = field(default=None, repr=False)
    """With ``distill_weight`` > 0: the teacher given to ``configure``, on ``device``, frozen
    and in eval mode (outside the optimizer); ``step`` runs its forward pass too."""
    prepared: Prepared | None = field(default=None, repr=False)
    """The trial-side setup behind this object (``autotune.train.parallel.Prepared``): it
    holds the unit groups that ``prune_after_steps`` cuts."""
    grad_norm: torch.Tensor | None = field(default=None, init=False)
    """With ``grad_clip`` > 0: the global gradient norm before clipping at the last ``step``,
    as a tensor on the device (``float(run.grad_norm)`` reads it; on a GPU that waits for
    the device, so read it when you log, not at every step)."""

    @property
    def batch_size(self) -> int:
        """Micro-batch size: examples in one forward/backward pass."""
        return self.recipe.batch_size

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches whose gradients are summed into one optimizer step."""
        return self.recipe.accumulation_steps

    def autocast(self) -> contextlib.AbstractContextManager:
        """A fresh autocast context for the recipe's precision
        (``autotune.knobs.autocast_context``); ``step`` uses it for training; wrap evaluation
        forward passes in it too."""
        return autocast_context(self.recipe.precision, self.device.type)

    def split(self, batch: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Cut one batch (tensors sharing their first dimension) into micro-batches of
        ``batch_size`` examples: load ``batch_size * accumulation_steps`` examples at a time
        and pass ``split(batch)`` to ``step``."""
        chunks = [t.split(self.batch_size) for t in batch]
        return [list(parts) for parts in zip(*chunks)]

    def step(self, micro_batches: Sequence[Sequence[torch.Tensor]], loss_fn: LossFn) -> float:
        """One optimizer step over ``micro_batches``, exactly as in a search trial: each
        micro-batch's loss under autocast, divided by their count (so N micro-batches of B
        examples give the gradient of one batch of N*B), fp16 loss scaling, gradient clipping
        (``grad_clip``), the optimizer and scheduler steps, zeroed gradients, and pruned
        weights re-zeroed.

        ``loss_fn(model, micro_batch)`` returns the mean loss; the batches must already be on
        ``device``. With a teacher (``distill_weight`` > 0) it returns ``(mean task loss,
        logits)`` of one forward pass instead, like ``Task.outputs``: it is applied to the
        model and, without gradients, to the teacher, and the step's loss is the
        distillation mix (``autotune.knobs.distillation_loss``). Returns the mean loss over
        the micro-batches. Raises ``FloatingPointError``
        when a loss is NaN or infinite (a trial ends as *diverged* there), before that
        micro-batch's backward pass.
        """
        if len(micro_batches) == 0:
            raise ValueError("step() needs at least one micro-batch; got an empty sequence")
        if self.teacher is not None:
            loss_fn = distillation_loss(loss_fn, self.teacher, self.recipe)  # type: ignore[arg-type]
        try:
            loss = optimizer_step(
                self.model, loss_fn, micro_batches, self.optimizer, self.scheduler, self.recipe,
                self.device.type, scaler=self.scaler, masks=self.masks,
                channels_last=self.channels_last, grad_norm=self._keep_grad_norm,
            )
        except Diverged as exc:
            raise FloatingPointError(
                f"{exc}; lower the learning rate (recipe lr={self.recipe.lr:g}) or use fp32 "
                f"(precision={self.recipe.precision!r})"
            ) from None
        self._prune_when_due()
        return loss

    def _prune_when_due(self) -> None:
        """After the ``prune_after_steps``-th step: the structured prune (see the class
        docstring), through ``Prepared.prune_units``, a trial's own."""
        due = self.recipe.prune_after_steps > 0 \
            and self.scheduler.last_epoch >= self.recipe.prune_after_steps
        if not due or self.prepared is None or not self.prepared.prune_groups:
            return
        self.prepared.prune_units()
        for name in ("optimizer", "scheduler", "masks"):
            object.__setattr__(self, name, getattr(self.prepared, name))  # frozen: only here

    def _keep_grad_norm(self, norm: torch.Tensor) -> None:
        object.__setattr__(self, "grad_norm", norm.detach())  # frozen: only step() sets it


def configure(
    recipe: Recipe, model: nn.Module, *, device: str | torch.device | None = None,
    teacher: nn.Module | None = None,
) -> Configured:
    """Apply ``recipe`` to ``model`` as a trial does, for a training loop of your own.

    Moves ``model`` to ``device`` (default: a GPU if there is one, else the CPU) in training
    mode, sets TF32 for this process (``tf32``), puts convolution weights in channels-last
    order (``channels_last``), removes its smallest units (``prune_ratio``, structured pruning:
    now, or at ``step`` number ``prune_after_steps``), turns on activation checkpointing
    (``checkpointing``), zeroes its smallest weights (``weight_sparsity``), compiles its
    forward in place (``compile``, with the inductor cache a search's trials share), and
    builds the optimizer over its parameters (in the ``fused_optimizer`` implementation), the
    learning-rate scheduler and, for fp16, the grad scaler. A recipe that distils
    (``distill_weight`` > 0) needs ``teacher``, a trained model taking the same batches: it is
    moved to the device once and frozen (see ``Configured.step`` for the loss function it
    then takes). Raises ``UserError`` for a multi-worker recipe, one the device cannot run
    (``tf32``, or ``compile`` reduce-overhead, on a CPU), or a teacher missing or not asked
    for.
    """
    _require_single(recipe)
    if recipe.distill_weight > 0 and teacher is None:
        raise UserError(f"the recipe distils (distill_weight {recipe.distill_weight:g}): pass "
                        "the trained teacher, configure(recipe, model, teacher=teacher_model), "
                        "or use recipe.replace(distill_weight=0.0)")
    if recipe.distill_weight == 0 and teacher is not None:
        raise UserError("a teacher was given but the recipe does not distil (distill_weight "
                        "0); drop teacher=, or set distill_weight > 0")
    dev = pick_device(str(device) if device is not None else None)
    reason = unsupported_reason(recipe, dev.type)
    if reason:
        raise UserError(f"this recipe cannot run on {dev.type}: {reason}")
    model.train()
    prepared = prepare(model, recipe, dev, teacher)  # a trial's own setup, in the same order
    return Configured(
        recipe=recipe,
        model=prepared.model,
        optimizer=prepared.optimizer,
        scheduler=prepared.scheduler,
        scaler=prepared.scaler,
        masks=prepared.masks,
        device=dev,
        channels_last=prepared.channels_last,
        inactive=tuple(prepared.inactive),
        teacher=prepared.teacher,
        prepared=prepared,
    )


def fit(
    recipe: Recipe,
    task: Task,
    *,
    seed: int = 0,
    target: float | None = None,
    max_train_seconds: float | None = None,
    device: str | None = None,
) -> TrialResult:
    """Train ``task``'s model with ``recipe`` through ``run_trial``, the code path of a search
    trial and of ``autotune train``, until ``target`` (default: the task's) or
    ``max_train_seconds`` of training (default: the task's).

    Returns the ``TrialResult``: ``status`` (``reached``, ``not_reached``, ``diverged``, ...),
    ``tta_seconds``, ``best_metric`` and the evaluation ``curve``. Like a trial it does not
    raise for what the recipe does to the run (out of memory, NaN loss); check ``status``.
    """
    limits = TrialLimits.for_task(
        task, target=target, max_train_seconds=max_train_seconds, seed=seed
    )
    return run_trial(task, recipe, limits, device=device)


def _require_single(recipe: Recipe) -> None:
    if recipe.parallelism == "single":
        return
    raise UserError(
        f"configure() applies a recipe in one process on one device, but this recipe has "
        f"parallelism {recipe.parallelism!r} with workers={recipe.workers}. For now, apply "
        f"multi-worker recipes through `autotune train --recipe RECIPE.yaml --model ...` or an "
        f"export format (`autotune export --format deepspeed|torchrun|hf`); or run it on one "
        f"device with recipe.replace(parallelism='single', workers=1, offload=False)."
    )
