"""Applying a recipe to a real training run: the knobs, and the trial loop that times them."""

from autotune.train.knobs import (
    apply_checkpointing,
    apply_masks,
    autocast_context,
    build_optimizer,
    build_scheduler,
    lr_factor,
    make_grad_scaler,
    prune_by_magnitude,
    sparsity,
)
from autotune.train.loop import TrialLimits, TrialResult, optimizer_step, pick_device, run_trial

__all__ = [
    "TrialLimits",
    "TrialResult",
    "apply_checkpointing",
    "apply_masks",
    "autocast_context",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "make_grad_scaler",
    "optimizer_step",
    "pick_device",
    "prune_by_magnitude",
    "run_trial",
    "sparsity",
]
