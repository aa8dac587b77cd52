"""``run_trial``: the entry point of one trial, in one process or over several workers.

A single-worker recipe trains here (``autotune.train.loop.train_in_process``), or in the
user's own loop for a task that has one (``OwnsTraining``: a Hugging Face ``Trainer``, a
training function). A multi-worker recipe (``workers > 1``) starts its workers through
``launch`` (default: one local process each, ``autotune.train.distributed.run_workers``; a
search passes a launcher that places them as Ray actors), each of which runs
``train_in_process``, or the user's own loop, as its part of the run. This module sits above
both, so neither needs the other.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.distributed as dist

from autotune.recipe import Recipe
from autotune.tasks import Task
from autotune.train.distributed import OwnsTraining, run_workers
from autotune.train.loop import train_in_process
from autotune.train.result import ReportFn, TrialLimits, TrialResult

LaunchFn = Callable[..., TrialResult]
"""Starts the workers of a multi-worker trial: ``(task, recipe, limits, report, device)`` ->
worker 0's ``TrialResult``."""


def run_trial(
    task: Task,
    recipe: Recipe,
    limits: TrialLimits,
    report: ReportFn | None = None,
    device: str | None = None,
    launch: LaunchFn | None = None,
) -> TrialResult:
    """Train ``task``'s model with ``recipe`` until ``limits.target`` or the time limit.

    ``report`` is called after each evaluation with the running measurements (the fields of
    ``TrialResult`` plus ``final``), so a scheduler can stop a losing trial early. Runs the same
    way in a Ray Tune worker, in ``autotune train`` and in a unit test; never raises for what a
    recipe does to a run (see ``autotune.train.loop``). Inside a worker of a multi-worker trial
    (process group initialised) this is that worker's part of the run.
    """
    if recipe.workers > 1 and not dist.is_initialized():
        result = (launch or run_workers)(task, recipe, limits, report, device)
        if report is not None:
            report({**result.to_dict(), "final": True})
        return result
    if isinstance(task, OwnsTraining):  # after the launch: each worker runs the user's loop
        return task.train_own_loop(recipe, limits, report, device)
    return train_in_process(task, recipe, limits, report, device)
