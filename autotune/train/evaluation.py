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
- **A task's own metric, read in pieces** (``Task.evaluate``: no known variance, and not
  necessarily a mean over examples). The set is split once into up to ``CUSTOM_PIECES`` pieces
  of random examples (at least ``MIN_CUSTOM_PIECE`` each; a set of fewer than
  ``MIN_CUSTOM_PIECES`` such pieces is read whole). A point reads piece after piece, from
  ``FIRST_LOOK`` pieces on asks whether the pieces' mean is short of the target by more than its
  own spread says it could be (``spread_margin``: the one-sided 2-sigma Student-t bound on the
  mean of the set's pieces from those read, so three pieces that disagree need a wide margin and
  three that agree a narrow one), and stops there: the point records that mean, which cannot
  reach the target. When half the pieces have not said so, the point reads the whole set
  (``evaluate`` on all of it, so a metric that is not a mean is still the set's). Each point
  starts ``FIRST_LOOK`` pieces further on (the pieces rotate), so that one unlucky draw of
  pieces cannot hide a crossing at every point. Why the spread, not a fixed margin: a quarter of
  ``gpt``'s 256 blocks read 1.4-2.8% of its target off the whole set, but a quarter of the test
  suite's toy loss task (256 examples, one number each) read 20-44% off, and a fixed 5% margin
  let its searches miss their target. A point whose full set is exactly at the target stops
  early about one time in 30 (simulated: ``tests/test_evaluation.py``). A set read whole in
  under ``CHEAP_READ_S`` is always read whole; until a trial has read it whole, the pieces' own
  time estimates that (a first point read whole cost ``gpt`` 0.8 s against 0.3 s, and under the
  quarter cap pushed its next point from 2 s to 3.2 s of training, where its fastest recipes
  reach the target).
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
import time

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
CUSTOM_PIECES = 8
"""A task's own metric: its validation set is split into this many pieces..."""
MIN_CUSTOM_PIECE = 16
"""...of at least this many examples each..."""
MIN_CUSTOM_PIECES = 6
"""...and a set of fewer such pieces is read whole (the first look needs three, and half of
the pieces at least that many)."""
FIRST_LOOK = 3
"""A task's own metric: pieces read before the first decision (two pieces' spread is one
difference: its Student-t bound is 14 standard errors, no use)."""
CHEAP_READ_S = 0.05
"""A task's own metric whose whole set reads in less than this is read whole: its pieces would
cost their calls' overhead (a few milliseconds each) for less than they save. A trial's first
point reads pieces, and their time, scaled to the whole set, is the estimate until a whole
read measures it."""
T_QUANTILES = {2: 4.527, 3: 3.307, 4: 2.869, 5: 2.649, 6: 2.517, 7: 2.429}
"""One-sided Student-t quantiles at the normal's ``SIGMAS`` = 2 (0.97725), by degrees of
freedom (pieces read minus one)."""
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


def validation_pieces(task: Task, count: int | None = None,
                      seed: int = SUBSET_SEED) -> list[Task]:
    """``task``'s validation set split into ``count`` pieces of random examples (seeded), each
    in the set's own order; together they hold every example once. ``count`` None: accuracy's
    (``piece_count``: one piece when the set is under twice ``MIN_PIECE``)."""
    count = piece_count(task) if count is None else count
    order = _shuffled(task.num_validation, seed)
    # Read in smaller batches (``evaluation_batch_size``): a piece of a set sorted by length
    # (bert's) spans every length, and one batch of it would pad every sentence to the
    # longest (0.13 s against 0.06 s). The memory model traces the same batch.
    batch = evaluation_batch_size(task)
    return [dataclasses.replace(validation_rows(task, chunk.sort().values),
                                eval_batch_size=batch) for chunk in order.chunk(count)]


def custom_piece_count(num_validation: int) -> int:
    """A task's own metric: how many pieces its set of ``num_validation`` examples is read in
    (0: it is read whole)."""
    count = min(CUSTOM_PIECES, num_validation // MIN_CUSTOM_PIECE)
    return count if count >= MIN_CUSTOM_PIECES else 0


def last_look(pieces: int) -> int:
    """Pieces read at most before a point of a task's own metric reads the whole set."""
    return max(FIRST_LOOK, pieces // 2)


def spread_margin(values: list[float], pieces: int) -> float:
    """How far the mean of the first ``len(values)`` of ``pieces`` pieces' metrics may lie
    from the mean over all of them, at one-sided 2 sigma: the Student-t quantile times the
    standard error of the values read, corrected for drawing pieces without replacement."""
    k = len(values)
    mean = sum(values) / k
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    correction = math.sqrt((pieces - k) / (pieces - 1))
    return T_QUANTILES[k - 1] * sd / math.sqrt(k) * correction


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
        self.metric_pieces: list[Task] = []
        if quick and task.evaluate is None:
            pieces = validation_pieces(task)
            self.pieces = pieces if len(pieces) > 1 else []
        elif quick:
            count = custom_piece_count(task.num_validation)
            self.metric_pieces = validation_pieces(task, count) if count else []
        self.full_points = 0
        self.quick_points = 0
        self.whole_seconds: float | None = None
        """A task's own metric: how long the latest read of the whole set took, or, before
        one, the pieces' time scaled to the whole set."""

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
        if self.metric_pieces and not final \
                and (self.whole_seconds is None or self.whole_seconds >= CHEAP_READ_S):
            short = self._metric_by_pieces(model, device)
            if short is not None:
                self.quick_points += 1
                return short, False
        self.full_points += 1
        start = time.perf_counter()
        metric = evaluate_metric(self.task, model, device)
        self.whole_seconds = time.perf_counter() - start
        return metric, True

    def _metric_by_pieces(self, model: nn.Module, device: torch.device) -> float | None:
        """The mean of the pieces read when they say the metric is short of the target (see
        the module docstring), else None (the whole set must be read)."""
        pieces = self.metric_pieces
        # This point's first piece: each point starts FIRST_LOOK pieces on (8 pieces: a
        # cycle through every piece), so consecutive points first read different pieces.
        start = (self.full_points + self.quick_points) * FIRST_LOOK
        values: list[float] = []
        sizes: list[int] = []
        began = time.perf_counter()
        short = None
        for k in range(last_look(len(pieces))):
            piece = pieces[(start + k) % len(pieces)]
            values.append(evaluate_metric(piece, model, device))
            sizes.append(piece.num_validation)
            if len(values) >= FIRST_LOOK:
                mean = sum(v * n for v, n in zip(values, sizes, strict=True)) / sum(sizes)
                if self._below(mean, spread_margin(values, len(pieces))):
                    short = mean
                    break
        if self.whole_seconds is None:
            self.whole_seconds = (time.perf_counter() - began) * len(pieces) / len(values)
        return short

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

