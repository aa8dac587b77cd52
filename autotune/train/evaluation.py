"""The evaluation schedule of a trial: a validation set read a piece at a time, only as far as
it takes to tell that the metric is below the target, the whole set to confirm a crossing, and
intervals that stretch when evaluating costs too much of the training time.

Why: evaluation is not on the time-to-target clock, but it is on the search's wall clock, and
reading all of a task's validation data every interval cost a quarter to a half of a search
(the ``bert`` task: 2,000 sentences each training second, 0.6 s per second of training on this
CPU; on the H200 11.6 s of evaluation per 40 s of training). Most evaluations of a trial are
far from its target and only need to say "not yet"; a small sample says that as well, and one
that is a little closer says it after a larger one. The target itself is only ever declared
reached by the full validation set, so time-to-target means what it always meant.

- **Accuracy, read in pieces** (``Task.evaluate`` unset, a validation set of at least
  2 x ``MIN_PIECE`` examples). The set is split once into up to ``PIECES`` pieces of random
  examples (seeded: the same pieces for every trial and seed; each in the set's own order, so a
  set sorted by length stays sorted). An evaluation point reads piece after piece and stops as
  soon as the accuracy of the examples read so far is more than ``SIGMAS`` standard errors
  below the target (the standard error of that many examples drawn without replacement from
  the set, at the target's accuracy): the point records that running accuracy, which cannot
  reach the target. Only a point that read every piece records the full set's accuracy (the
  pieces' correct answers added up: exactly the set's) and can reach the target. ``bert``
  (2,000 sentences, 8 pieces of 250) stops after one piece below 0.699, after two below 0.716,
  after four below 0.731: its majority-class plateau (0.564) costs 1/8 of a full read. A point
  whose full set is exactly at the target stops early at one in 10 (the seven looks add up;
  simulated), one 0.01 above it at one in 70; the crossing is then caught one interval later.
- **A task's own metric** (``Task.evaluate``) has no known variance and need not be a mean
  over examples: a fixed subset of 1/``QUICK_FRACTION`` of the set (at least ``MIN_QUICK``) is
  read first, and the whole set only when the subset's metric is within ``CUSTOM_MARGIN`` of
  the target's magnitude.
- **The trial's last point** reads the whole set.
- **Intervals.** Evaluation points fall every ``eval_every_seconds`` of training, on that
  grid, as long as the trial's evaluations so far took at most ``MAX_EVAL_SHARE`` of its
  training so far; when they took more, the next point waits until they no longer do
  (``paced_point``). The share is kept over the whole trial, not per interval: the cheap reads
  while far from the target leave room for the full reads near it at the grid's resolution
  (per interval, one full read of ``bert``'s set, 0.6 s, pushed the next point 2.4 s back,
  just where the time-to-target is decided). A task whose every evaluation costs more than a
  quarter of an interval gets a coarser time-to-target instead of a search spent evaluating.

Each trial records its points that read the whole set (``eval_points_full``) and those that
stopped early (``eval_points_quick``). ``TrialLimits.quick_eval=False`` reads the whole set at
every point (tests of exact curves).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from autotune import objective
from autotune.tasks import (
    Task,
    evaluate_metric,
    evaluation_batch_size,
    piece_count,
)

SIGMAS = 2.0
"""Standard errors below the target at which a partial read of accuracy stops."""
QUICK_FRACTION = 4
"""A task's own metric: its subset is 1/QUICK_FRACTION of the validation set..."""
MIN_QUICK = 250
"""...and at least this many examples; a set under QUICK_FRACTION x MIN_QUICK is read whole."""
CUSTOM_MARGIN = 0.05
"""A task's own metric: the whole set is read within this fraction of the target's
magnitude."""
MAX_EVAL_SHARE = 0.25
"""Evaluation seconds allowed per training second, over a trial."""
SUBSET_SEED = 0


def validation_rows(task: Task, index: torch.Tensor) -> Task:
    """``task`` with its validation data cut to the rows at ``index`` (ascending: the set's
    own order kept)."""
    validation: tuple[torch.Tensor, ...] | Dataset
    if isinstance(task.validation, Dataset):
        validation = Subset(task.validation, index.tolist())
    else:
        validation = tuple(t[index] for t in task.validation)
    return dataclasses.replace(task, validation=validation)


def _shuffled(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def validation_subset(task: Task, size: int, seed: int = SUBSET_SEED) -> Task:
    """``task`` with its validation data cut to ``size`` examples drawn at random (seeded),
    kept in the set's own order (a set sorted by length stays sorted)."""
    return validation_rows(task, _shuffled(task.num_validation, seed)[:size].sort().values)


def validation_pieces(task: Task, seed: int = SUBSET_SEED) -> list[Task]:
    """``task``'s validation set split into pieces of random examples (seeded), each in the
    set's own order; together they hold every example once. One piece when the set is under
    twice ``MIN_PIECE``."""
    count = piece_count(task)
    order = _shuffled(task.num_validation, seed)
    # Read in smaller batches (``evaluation_batch_size``): a piece of a set sorted by length
    # (bert's) spans every length, and one batch of it would pad every sentence to the
    # longest (0.13 s against 0.06 s). The memory model traces the same batch.
    batch = evaluation_batch_size(task)
    return [dataclasses.replace(validation_rows(task, chunk.sort().values),
                                eval_batch_size=batch) for chunk in order.chunk(count)]


def quick_size(num_validation: int) -> int | None:
    """A task's own metric: the subset's size for a set of ``num_validation`` examples; None:
    too small to subsample."""
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
    evaluation point records and whether it is the whole set's."""

    def __init__(self, task: Task, target: float, higher_is_better: bool,
                 quick: bool = True) -> None:
        self.task, self.target, self.higher_is_better = task, target, higher_is_better
        self.pieces: list[Task] = []
        self.quick: Task | None = None
        if quick and task.evaluate is None:
            pieces = validation_pieces(task)
            self.pieces = pieces if len(pieces) > 1 else []
        elif quick:
            size = quick_size(task.num_validation)
            self.quick = validation_subset(task, size) if size else None
        self.full_points = 0
        self.quick_points = 0

    def _below(self, metric: float, margin: float) -> bool:
        """Whether ``metric`` is more than ``margin`` short of the target."""
        edge = self.target - margin if self.higher_is_better else self.target + margin
        return not objective.reaches(metric, edge, self.higher_is_better)

    def __call__(self, model: nn.Module, device: torch.device, final: bool) -> tuple[float, bool]:
        """The metric of this evaluation point and whether it is the whole set's: a partial
        read while it is clearly short of the target and the trial goes on (``final``
        False), else the whole set's."""
        if self.pieces:
            return self._by_pieces(model, device, final)
        if self.quick is not None and not final:
            metric = evaluate_metric(self.quick, model, device)
            if self._below(metric, CUSTOM_MARGIN * abs(self.target)):
                self.quick_points += 1
                return metric, False
        self.full_points += 1
        return evaluate_metric(self.task, model, device), True

    def _by_pieces(self, model: nn.Module, device: torch.device,
                   final: bool) -> tuple[float, bool]:
        total = self.task.num_validation
        correct = seen = 0
        for piece in self.pieces:
            n = piece.num_validation
            correct += round(evaluate_metric(piece, model, device) * n)
            seen += n
            if seen < total and not final \
                    and self._below(correct / seen, accuracy_margin(self.target, seen, total)):
                self.quick_points += 1
                return correct / seen, False
        self.full_points += 1
        return correct / total, True


def paced_point(grid_next: float, eval_total: float, share: float = MAX_EVAL_SHARE) -> float:
    """The training time of the next evaluation point: the grid's next, or later when the
    trial's evaluations so far (``eval_total`` seconds) would exceed ``share`` of its
    training until then."""
    return max(grid_next, eval_total / share)

