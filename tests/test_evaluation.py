"""The evaluation schedule (``autotune.train.evaluation``): accuracy read piece by piece only
as far as it takes to tell it is short of the target, the full set near it and at the end, a
task's own metric on a fixed subset first, and the cost cap over a trial."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autotune import objective
from autotune.recipe import Recipe
from autotune.tasks import (
    MIN_PIECE,
    PIECE_BATCH_DIVISOR,
    PIECES,
    Task,
    evaluate_metric,
    evaluation_batch_size,
)
from autotune.train import TrialLimits, run_trial
from autotune.train.evaluation import (
    CUSTOM_MARGIN,
    MIN_QUICK,
    QUICK_FRACTION,
    Evaluator,
    accuracy_margin,
    paced_point,
    quick_size,
    validation_pieces,
    validation_subset,
)
from tests.toy_task import make_toy_task


class Dial(nn.Module):
    """A "model" whose accuracy is set by hand: it answers example i right when i mod 100 is
    under ``percent`` (so about ``percent``% of any large random subset)."""

    def __init__(self, percent: int) -> None:
        super().__init__()
        self.percent = percent
        self.weight = nn.Parameter(torch.zeros(1))


def dial_task(n: int = 2000, evaluated: list[int] | None = None) -> Task:
    index = torch.arange(n)
    labels = index % 2

    def predict(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        if evaluated is not None:
            evaluated.append(len(batch[0]))
        right = batch[0] % 100 < model.percent
        return torch.where(right, batch[1], 1 - batch[1])

    return dataclasses.replace(make_toy_task(), validation=(index, labels), predict=predict,
                               eval_batch_size=4096, target=0.75)


def test_subset_is_fixed_in_order_and_a_quarter():
    task = dial_task()
    size = quick_size(task.num_validation)
    assert size == 2000 // QUICK_FRACTION == 500
    a, b = validation_subset(task, size), validation_subset(task, size)
    assert a.num_validation == 500
    assert torch.equal(a.validation[0], b.validation[0])  # the same examples every time
    assert bool((a.validation[0][1:] > a.validation[0][:-1]).all())  # in the set's order
    assert torch.equal(a.validation[1], a.validation[0] % 2)  # rows kept together
    dataset = dataclasses.replace(task, train=TensorDataset(*task.train),
                                  validation=TensorDataset(*task.validation))
    sub = validation_subset(dataset, size)
    assert len(sub.validation) == 500 and sub.validation.indices == a.validation[0].tolist()
    assert quick_size(QUICK_FRACTION * MIN_QUICK - 1) is None  # too small to subsample


def test_margin_is_two_standard_errors_of_the_subset():
    # bert: 500 of 2,000 sentences at 0.75
    assert accuracy_margin(0.75, 500, 2000) == pytest.approx(0.034, abs=0.001)
    assert accuracy_margin(0.75, 500, 2000) < accuracy_margin(0.75, 250, 1000)


def test_pieces_are_random_examples_in_order_and_hold_the_set_once():
    task = dial_task()
    pieces = validation_pieces(task)
    assert [p.num_validation for p in pieces] == [250] * PIECES
    held = torch.cat([p.validation[0] for p in pieces])
    assert torch.equal(held.sort().values, torch.arange(2000))  # every example once
    for p in pieces:
        assert bool((p.validation[0][1:] > p.validation[0][:-1]).all())  # the set's order
        assert torch.equal(p.validation[1], p.validation[0] % 2)  # rows kept together
    assert torch.equal(validation_pieces(task)[3].validation[0], pieces[3].validation[0])
    # read in smaller batches, so that a piece of a set sorted by length pads little
    # (a quarter of eval_batch_size, no more than a piece: what the memory model traces)
    batch = min(task.eval_batch_size // PIECE_BATCH_DIVISOR, 250)
    assert all(p.eval_batch_size == batch == evaluation_batch_size(task) for p in pieces)
    assert len(validation_pieces(dial_task(2 * MIN_PIECE - 1))) == 1  # read whole


def test_a_point_reads_only_as_far_as_it_takes_to_tell_it_is_short():
    seen: list[int] = []
    task = dial_task(evaluated=seen)
    ev = Evaluator(task, 0.75, True)
    cpu = torch.device("cpu")
    metric, full = ev(Dial(50), cpu, final=False)  # far: one piece says so
    assert (full, seen) == (False, [250]) and metric == pytest.approx(0.5, abs=0.06)
    seen.clear()
    metric, full = ev(Dial(73), cpu, final=False)  # near: more pieces, not all
    assert full is False and 2 <= len(seen) < PIECES and metric < 0.75
    seen.clear()
    metric, full = ev(Dial(76), cpu, final=False)  # above: every piece, the set's accuracy
    assert full is True and seen == [250] * PIECES and metric == pytest.approx(0.76)
    seen.clear()
    metric, full = ev(Dial(50), cpu, final=True)  # the trial's last point: the whole set
    assert full is True and sum(seen) == 2000 and metric == pytest.approx(0.50)
    assert (ev.full_points, ev.quick_points) == (2, 2)
    seen.clear()
    off = Evaluator(task, 0.75, True, quick=False)
    assert off(Dial(50), cpu, final=False)[1] is True and seen == [2000]


def test_the_pieces_add_up_to_the_full_sets_accuracy():
    """The pieces' correct answers are the whole set's, for any pattern of right and wrong
    answers (here a seeded random one)."""
    n = 2000
    right = torch.rand(n, generator=torch.Generator().manual_seed(3)) < 0.74

    def predict(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        return torch.where(right[batch[0]], batch[1], 1 - batch[1])

    task = dataclasses.replace(dial_task(n), predict=predict, eval_batch_size=300)
    metric, full = Evaluator(task, 0.75, True)(Dial(0), torch.device("cpu"), final=True)
    assert full is True and metric == int(right.sum()) / n
    assert metric == evaluate_metric(task, Dial(0), torch.device("cpu"))


def test_a_task_metric_reads_its_subset_then_the_whole_set_near_the_target():
    seen: list[int] = []

    def evaluate(model: nn.Module, batches) -> float:  # the examples read, as the metric
        sizes = [len(b[0]) for b in batches]
        seen.extend(sizes)
        return float(sum(sizes))

    task = dataclasses.replace(dial_task(), evaluate=evaluate)
    cpu = torch.device("cpu")
    ev = Evaluator(task, 2000.0, True)
    assert ev(Dial(0), cpu, final=False) == (500.0, False)  # far: the subset only
    seen.clear()
    near = Evaluator(task, 520.0, True)  # the subset's 500 is within 5% of 520
    assert near(Dial(0), cpu, final=False) == (2000.0, True) and seen == [500, 2000]
    seen.clear()
    assert ev(Dial(0), cpu, final=True) == (2000.0, True) and seen == [2000]


def test_a_lower_is_better_metric_is_short_above_its_target_plus_margin():
    task = dataclasses.replace(dial_task(), evaluate=lambda model, batches: 0.0)
    ev = Evaluator(task, 2.0, False)
    margin = CUSTOM_MARGIN * 2.0
    assert ev._below(2.0 + 1.1 * margin, margin) and not ev._below(2.0 + 0.9 * margin, margin)


def test_points_keep_the_grid_while_the_trials_evaluations_are_under_a_quarter():
    assert paced_point(3.0, 0.5) == 3.0  # 0.5 s of evaluation in 3 s of training: on grid
    assert paced_point(3.0, 1.0) == pytest.approx(4.0)  # 1 s needs 4 s of training
    # Cheap reads while far leave room for costlier ones near the target: after 12 points
    # of 0.15 s (1.8 s), three confirmations of 0.6 s each still land on the 1-s grid.
    total, grid = 1.8, 12.0
    for _ in range(3):
        total += 0.6
        grid = paced_point(grid + 1.0, total)
    assert grid == 15.0


def test_a_trial_reads_the_subset_while_far_and_the_full_set_at_its_end():
    task = dataclasses.replace(make_toy_task(n=8000, target=1.5), eval_every_seconds=0.001)
    assert task.num_validation == 2000
    lim = dataclasses.replace(TrialLimits.for_task(task, seed=0), max_steps=60)
    result = run_trial(task, Recipe(optimizer="sgd", lr=1e-2), lim)
    assert result.status == objective.NOT_REACHED
    # Every point but the last was far from 1.5 (no accuracy is within the margin of it):
    # the subset only; the last point, the trial's end, read the full set.
    assert result.eval_points_quick == len(result.curve) - 1 >= 2
    assert result.eval_points_full == 1


def test_a_trial_reaches_its_target_only_on_the_full_set(monkeypatch):
    """A subset's reading above the target (a lucky subset) does not end a trial: only a
    full-set reading does."""
    task = dataclasses.replace(make_toy_task(n=8000, target=0.9), eval_every_seconds=0.001)
    lim = dataclasses.replace(TrialLimits.for_task(task), max_steps=30)
    monkeypatch.setattr(Evaluator, "__call__",
                        lambda self, model, device, final: (0.5, True) if final else (0.95, False))
    result = run_trial(task, Recipe(optimizer="sgd", lr=1e-2), lim)
    assert result.status == objective.NOT_REACHED and result.steps == 30
    monkeypatch.undo()
    result = run_trial(task, Recipe(optimizer="sgd", lr=1e-2), TrialLimits.for_task(task))
    assert result.status == objective.REACHED and result.eval_points_full >= 1
    assert result.curve[-1][1] >= 0.9
    assert result.tta_seconds == pytest.approx(result.curve[-1][0], abs=1e-3)
