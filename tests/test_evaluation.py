"""The evaluation schedule (``autotune.train.evaluation``): a fixed validation subset while
far from the target, the full set near it and at the end, and the cost cap on intervals."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autotune import objective
from autotune.recipe import Recipe
from autotune.tasks import Task
from autotune.train import TrialLimits, run_trial
from autotune.train.evaluation import (
    CUSTOM_MARGIN,
    MIN_QUICK,
    QUICK_FRACTION,
    Evaluator,
    accuracy_margin,
    next_point,
    quick_size,
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


def test_margin_is_three_standard_errors_of_the_subset():
    # bert: 500 of 2,000 sentences at 0.75
    assert accuracy_margin(0.75, 500, 2000) == pytest.approx(0.050, abs=0.001)
    assert accuracy_margin(0.75, 500, 2000) < accuracy_margin(0.75, 250, 1000)


def test_far_reads_the_subset_near_and_final_read_the_full_set():
    seen: list[int] = []
    task = dial_task(evaluated=seen)
    ev = Evaluator(task, 0.75, True)
    assert ev.margin == pytest.approx(accuracy_margin(0.75, 500, 2000))
    metric, full = ev(Dial(50), torch.device("cpu"), final=False)
    assert (full, seen) == (False, [500]) and metric == pytest.approx(0.5, abs=0.05)
    seen.clear()
    metric, full = ev(Dial(73), torch.device("cpu"), final=False)  # within 0.05 of 0.75
    assert full is True and seen == [500, 2000] and metric == pytest.approx(0.73)
    seen.clear()
    metric, full = ev(Dial(50), torch.device("cpu"), final=True)  # the trial's last point
    assert full is True and seen == [2000]
    assert (ev.full_points, ev.quick_points) == (2, 2)
    seen.clear()
    off = Evaluator(task, 0.75, True, quick=False)
    assert off(Dial(50), torch.device("cpu"), final=False)[1] is True and seen == [2000]


def test_a_lower_is_better_metric_is_near_below_its_target_plus_margin():
    task = dataclasses.replace(dial_task(), evaluate=lambda model, batches: 0.0)
    ev = Evaluator(task, 2.0, False)
    assert ev.margin == pytest.approx(CUSTOM_MARGIN * 2.0)
    assert ev.near(2.0 + 0.9 * ev.margin) and not ev.near(2.0 + 1.1 * ev.margin)


def test_next_point_keeps_the_grid_unless_evaluating_costs_more_than_a_quarter():
    assert next_point(3.0, 2.1, 0.1) == 3.0
    assert next_point(3.0, 2.1, 1.0) == pytest.approx(2.1 + 4.0)


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
