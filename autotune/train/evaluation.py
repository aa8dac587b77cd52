"""The evaluation schedule of a trial: a quick look at a fixed subset of the validation data
while the metric is far from the target, the whole set to confirm a crossing, and intervals
that stretch when evaluating costs too much of the training time.

Why: evaluation is not on the time-to-target clock, but it is on the search's wall clock, and
reading all of a task's validation data every interval cost a quarter to a third of a search
(the ``bert`` task: 2,000 sentences each training second; on the H200 11.6 s of evaluation per
40 s of training). Most evaluations of a trial are far from its target and only need to say
"not yet"; a subset says that as well. The target itself is only ever declared reached by the
full validation set, so time-to-target means what it always meant.

- **Quick evaluations.** A validation set of at least ``QUICK_FRACTION`` x ``MIN_QUICK``
  examples is also evaluated on a fixed subset of 1/``QUICK_FRACTION`` of it (at least
  ``MIN_QUICK``; the same examples for every trial and seed, drawn once from seed 0, in the
  set's own order). An evaluation point evaluates the subset first; only when the subset's
  metric is within ``margin`` of the target (or the trial ends there) does it evaluate the full
  set, and the full set's metric is what the point records and what reaches the target.
- **The margin** makes a missed crossing rare. For accuracy (``Task.evaluate`` unset) it is
  ``SIGMAS`` standard errors of a subset's accuracy at the target, sampled without replacement
  from the full set (finite-population corrected): ``bert``, 500 of 2,000 at 0.75, gives 0.050.
  A crossing is then missed at a point only when the subset reads 3 standard errors low, about
  one point in 700, and it is caught one interval later. A task's own metric has no known
  variance: the margin is ``CUSTOM_MARGIN`` of the target's magnitude.
- **Intervals.** Evaluation points fall every ``eval_every_seconds`` of training, on that
  grid, unless an evaluation took more than ``MAX_EVAL_SHARE`` of the training since the last
  point: then the next point waits until ``1 / MAX_EVAL_SHARE`` times that evaluation's
  seconds of training have passed, so evaluation stays under ``MAX_EVAL_SHARE`` of training
  (at the cost of a coarser time-to-target on such a task; the trial records its evaluations).

``TrialLimits.quick_eval=False`` evaluates the full set at every point (tests of exact curves).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from autotune import objective
from autotune.tasks import Task, evaluate_metric

QUICK_FRACTION = 4
"""The subset is 1/QUICK_FRACTION of the validation set..."""
MIN_QUICK = 250
"""...and at least this many examples; a set under QUICK_FRACTION x MIN_QUICK is always read
whole (a smaller subset would be too noisy to say "far" with confidence)."""
SIGMAS = 3.0
"""Standard errors of the subset's accuracy between "far" and "near" the target."""
CUSTOM_MARGIN = 0.05
"""For a task's own metric: the margin as a fraction of the target's magnitude."""
MAX_EVAL_SHARE = 0.25
"""Evaluation seconds allowed per training second, between two evaluation points."""
SUBSET_SEED = 0


def validation_subset(task: Task, size: int, seed: int = SUBSET_SEED) -> Task:
    """``task`` with its validation data cut to ``size`` examples drawn at random (seeded),
    kept in the set's own order (a set sorted by length stays sorted)."""
    n = task.num_validation
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(n, generator=generator)[:size].sort().values
    validation: tuple[torch.Tensor, ...] | Dataset
    if isinstance(task.validation, Dataset):
        validation = Subset(task.validation, index.tolist())
    else:
        validation = tuple(t[index] for t in task.validation)
    return dataclasses.replace(task, validation=validation)


def quick_size(num_validation: int) -> int | None:
    """The subset's size for a validation set of ``num_validation`` examples; None: too small
    to subsample."""
    if num_validation < QUICK_FRACTION * MIN_QUICK:
        return None
    return max(MIN_QUICK, num_validation // QUICK_FRACTION)


def accuracy_margin(target: float, size: int, total: int, sigmas: float = SIGMAS) -> float:
    """``sigmas`` standard errors of the accuracy of ``size`` examples drawn without
    replacement from ``total`` whose accuracy is ``target``."""
    p = min(max(target, 0.05), 0.95)
    correction = (total - size) / max(total - 1, 1)
    return sigmas * math.sqrt(p * (1 - p) / size * correction)


class Evaluator:
    """A trial's evaluations (see the module docstring): ``__call__`` returns the metric an
    evaluation point records and whether the full set gave it."""

    def __init__(self, task: Task, target: float, higher_is_better: bool,
                 quick: bool = True) -> None:
        self.task, self.target, self.higher_is_better = task, target, higher_is_better
        size = quick_size(task.num_validation) if quick else None
        self.quick = validation_subset(task, size) if size else None
        if size is None:
            self.margin = 0.0
        elif task.evaluate is None:
            self.margin = accuracy_margin(target, size, task.num_validation)
        else:
            self.margin = CUSTOM_MARGIN * abs(target)
        self.full_points = 0
        self.quick_points = 0

    def near(self, metric: float) -> bool:
        """Whether a subset's ``metric`` is within the margin of the target (or past it)."""
        edge = self.target - self.margin if self.higher_is_better else self.target + self.margin
        return objective.reaches(metric, edge, self.higher_is_better)

    def __call__(self, model: nn.Module, device: torch.device, final: bool) -> tuple[float, bool]:
        """The metric of this evaluation point: the subset's when it is far from the target
        and the trial goes on (``final`` False), else the full set's."""
        if self.quick is not None and not final:
            metric = evaluate_metric(self.quick, model, device)
            self.quick_points += 1
            if not self.near(metric):
                return metric, False
        self.full_points += 1
        return evaluate_metric(self.task, model, device), True


def next_point(grid_next: float, elapsed: float, eval_seconds: float,
               share: float = MAX_EVAL_SHARE) -> float:
    """The training time of the next evaluation point: the grid's next, or later when the
    evaluation just made (``eval_seconds``) would exceed ``share`` of the training until it."""
    return max(grid_next, elapsed + eval_seconds / share)
