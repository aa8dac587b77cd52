"""``OwnLoopTask``: a ``Task`` whose training loop is the user's own (a Hugging Face ``Trainer``,
a training function), so that the search, its Ray trials, the records, the winner and the report
take it as they take any task.

Everything the search reads of a task is here: the name, the metric and its direction, the
target, the baseline (``baseline``, the user's own settings as a recipe), the trial's time limit
and evaluation interval, the description. What autotune's own loop would read (a model factory,
data, a loss) is there only where the integration can give it: the Trainer's model and datasets,
for the memory prediction and the DataLoader knobs; a training function has none, so its model
factory raises and the search launches every recipe (an out-of-memory is then recorded as
infeasible). ``autotune.train.run_trial`` sees ``train_own_loop`` (``OwnsTraining``) and hands the
trial to it instead of to ``autotune.train.loop``.

A multi-worker recipe's workers (``autotune.train.distributed.worker_main``) rebuild the task
from its ``load_spec`` (``worker_spec``): ``autotune.tasks.load_task`` calls ``REBUILD`` with
the integration, the factory's or function's ``package.module:function`` name and the options a
trial reads (the probed metric name, its direction, the target and limits), without the probe.
``launch_refusal`` says, before any worker starts, why the user's loop cannot run a recipe.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autotune.errors import UserError
from autotune.recipe import Recipe
from autotune.tasks import Task
from autotune.train.result import ReportFn, TrialLimits, TrialResult

INTEGRATION_KEY = "autotune.integration"
"""The task option naming the integration (``trainer`` or ``function``) of a search's task:
it travels to the trial processes with the other options (``SearchRequest.task_options``). A
dotted name, so that it can never be a keyword argument of a user's task factory."""

RunnerFn = Callable[[Recipe, TrialLimits, "ReportFn | None", "str | None"], TrialResult]
"""``(recipe, limits, report, device) -> TrialResult``: one trial in the user's own loop."""

DIRECTIONS = {"max": True, "min": False}
"""``--direction`` -> ``higher_is_better``."""

LOWER_IS_BETTER_WORDS = ("loss", "perplexity", "ppl", "error", "err", "mse", "mae", "rmse",
                         "wer", "cer")
"""Metric names that contain one of these are taken as lower-is-better when no direction is
given (``eval_loss``, ``eval_perplexity``, ``eval_wer``); every other metric as higher."""

REBUILD = "autotune.integrations:own_loop_task"
"""The task factory a worker process rebuilds an own-loop task with (``worker_spec``)."""

NO_DATA = (torch.zeros(1, 1),)
"""The data of a task whose data autotune does not see (a training function's; a Trainer's in a
trial process, where only the loop runs): one placeholder row, never trained on."""


def higher_is_better(metric: str, direction: str | None) -> bool:
    """The metric's direction: ``--direction`` when given, else guessed from its name (see
    ``LOWER_IS_BETTER_WORDS``). ``UserError`` for an unknown direction."""
    if direction is None:
        words = metric.lower().replace("-", "_").split("_")
        return not any(w in LOWER_IS_BETTER_WORDS for w in words)
    if direction not in DIRECTIONS:
        raise UserError(f"--direction must be max (higher is better, e.g. accuracy) or min "
                        f"(lower is better, e.g. a loss); got {direction!r}")
    return DIRECTIONS[direction]


def check_target(metric: str, target: float | None, source: str) -> float:
    """``target`` as a float: given, finite and above 0 (``Task``'s rule: the score's gap is
    relative to it), or ``UserError`` saying what to give."""
    if target is None:
        raise UserError(f"{source}: give the target value of {metric!r} to reach, e.g. "
                        "--target 0.8 (time-to-target is measured to it)")
    value = float(target)
    if not value > 0 or value == float("inf"):
        raise UserError(f"{source}: --target must be a finite number above 0 (the value of "
                        f"{metric!r} to reach); got {target!r}")
    return value


def _no_model() -> nn.Module:
    raise RuntimeError("this task's model is built inside the user's own training loop; "
                       "autotune cannot build it (the memory prediction is skipped and the "
                       "recipe launched)")


def _no_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    raise RuntimeError("this task trains in the user's own loop; autotune takes no step of it")


def _no_metric(model: nn.Module, batches: Any) -> float:
    raise RuntimeError("this task's metric is reported by the user's own loop")


@dataclass(frozen=True)
class OwnLoopTask(Task):
    """A task trained by the user's own loop (see the module docstring). Build one with
    ``autotune.integrations.trainer_task`` or ``function_task``; never trained by
    ``autotune.train.loop``."""

    runner: RunnerFn | None = None
    """Runs one trial in the user's loop; ``train_own_loop`` calls it."""
    baseline: Recipe | None = None
    """The baseline recipe: the user's own settings (a Trainer's ``TrainingArguments``), or
    None for autotune's plain one at ``default_batch_size`` and ``default_lr``."""
    integration: str = "function"
    """``trainer`` or ``function``: which loop it is."""
    refusal: Callable[[Recipe, str], str | None] | None = None
    """``(recipe, device_type) -> why not`` (None: it can run): ``launch_refusal``."""

    def train_own_loop(self, recipe: Recipe, limits: TrialLimits, report: ReportFn | None,
                       device: str | None) -> TrialResult:
        """One trial: the recipe applied in the user's loop, timed and recorded by
        ``autotune.integrations._session`` (the entry point ``autotune.train.run_trial``
        calls)."""
        if self.runner is None:
            raise RuntimeError(f"task {self.name!r} has no runner")
        return self.runner(recipe, limits, report, device)

    def launch_refusal(self, recipe: Recipe, device_type: str) -> str | None:
        """Why this loop cannot run ``recipe`` on ``device_type`` (None when it can): a
        multi-worker trial asks before it starts its workers (``autotune.train.distributed
        .check_launch``); the trial is then infeasible with that reason."""
        return self.refusal(recipe, device_type) if self.refusal is not None else None


def worker_spec(integration: str, spec: str, made: Any, options: dict[str, Any]
                ) -> tuple[str, dict[str, Any]] | None:
    """The ``load_spec`` a worker process rebuilds the task from (``REBUILD`` with the
    integration, ``spec`` and ``options``), or None when ``made`` (the factory or function)
    cannot be imported by the name ``spec`` in another process: defined in ``__main__`` or
    inside a function (a multi-worker trial then says so)."""
    module, _, qualname = spec.partition(":")
    if module in ("__main__", "__mp_main__") or "<locals>" in qualname:
        return None
    if not isinstance(made, str) and getattr(importlib.import_module(module), qualname,
                                             None) is not made:
        return None
    return REBUILD, {"integration": integration, "spec": spec, "options": options}


def own_loop_fields(name: str, metric: str, higher: bool, target: float,
                    max_train_seconds: float, eval_every_seconds: float) -> dict[str, Any]:
    """The ``Task`` fields every own-loop task shares: placeholder model, data and loss (see
    ``NO_DATA``), its metric and limits."""
    if not max_train_seconds > 0 or not eval_every_seconds > 0:
        raise UserError(f"task {name!r}: the trial time limit and the evaluation interval must "
                        f"be > 0 seconds; got {max_train_seconds} and {eval_every_seconds}")
    return dict(name=name, build_model=_no_model, train=NO_DATA, validation=NO_DATA,
                loss=_no_loss, predict=None, evaluate=_no_metric, target=target, metric=metric,
                higher_is_better=higher, max_train_seconds=max_train_seconds,
                eval_every_seconds=eval_every_seconds)
