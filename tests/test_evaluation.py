"""The evaluation schedule (``autotune.train.evaluation``): accuracy read piece by piece only
as far as it takes to tell it is short of the target, the full set near it and at the end, a
task's own metric read in pieces until their spread says it is short, and the cost cap over a
trial."""

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
from autotune.train import TrialLimits, evaluation, run_trial
from autotune.train.evaluation import (
    CHEAP_READ_S,
    CUSTOM_PIECES,
    FIRST_LOOK,
    MIN_CUSTOM_PIECE,
    MIN_CUSTOM_PIECES,
    Evaluator,
    accuracy_margin,
    custom_piece_count,
    last_look,
    paced_point,
    spread_margin,
    validation_pieces,
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


class Values(nn.Module):
    """A "model" whose metric on example i is ``values[i]`` (set by hand)."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("values", values)


def metric_task(n: int = 256, evaluated: list[torch.Tensor] | None = None) -> Task:
    """A task's own metric: the mean of the model's ``values`` over the examples read."""

    def evaluate(model: nn.Module, batches) -> float:
        rows = torch.cat([b[0] for b in batches])
        if evaluated is not None:
            evaluated.append(rows)
        return float(model.values[rows].mean())

    return dataclasses.replace(dial_task(n), evaluate=evaluate, eval_batch_size=4096)


def slow(ev: Evaluator) -> Evaluator:
    """``ev`` as if its latest whole read had taken 1 s: slow enough to read in pieces."""
    ev.whole_seconds = 1.0
    return ev


def spread_values(n: int, mean: float, spread: float) -> torch.Tensor:
    """``n`` values of mean exactly ``mean`` and standard deviation ``spread`` (seeded)."""
    z = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return mean + spread * (z - z.mean()) / z.std()


def test_a_task_metric_is_read_in_pieces_of_random_examples_from_sets_large_enough():
    assert custom_piece_count(256) == CUSTOM_PIECES == 8  # gpt's 256 blocks: 8 of 32
    assert custom_piece_count(MIN_CUSTOM_PIECES * MIN_CUSTOM_PIECE) == MIN_CUSTOM_PIECES
    assert custom_piece_count(MIN_CUSTOM_PIECES * MIN_CUSTOM_PIECE - 1) == 0  # read whole
    assert last_look(8) == 4 and last_look(6) == FIRST_LOOK
    pieces = validation_pieces(metric_task(), custom_piece_count(256))
    held = torch.cat([p.validation[0] for p in pieces])
    assert [p.num_validation for p in pieces] == [32] * 8
    assert torch.equal(held.sort().values, torch.arange(256))  # every example once
    assert not torch.equal(held, torch.arange(256))  # random examples, not runs of the set
    assert not Evaluator(metric_task(95), 0.5, True).metric_pieces  # under 6 x 16: whole
    task = metric_task()
    dataset = dataclasses.replace(task, train=TensorDataset(*task.train),
                                  validation=TensorDataset(*task.validation))
    subsets = validation_pieces(dataset, 8)  # a Dataset's pieces: the same rows, as Subsets
    assert [s.validation.indices for s in subsets] == [p.validation[0].tolist() for p in pieces]


def test_the_spread_margin_is_the_t_bound_on_the_mean_of_the_pieces():
    # three pieces 0.1 apart of 8: sd 0.1, t(2) = 4.527, finite-population sqrt(5/7)
    margin = spread_margin([1.0, 1.1, 1.2], 8)
    assert margin == pytest.approx(4.527 * 0.1 / 3 ** 0.5 * (5 / 7) ** 0.5, rel=1e-3)
    assert spread_margin([1.0, 1.0, 1.0], 8) == 0.0  # pieces that agree: no margin
    assert spread_margin([1.0, 1.1, 1.2, 1.1], 8) < margin  # one more piece: narrower


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_a_task_metric_stops_where_its_pieces_agree_it_is_short_and_not_where_they_differ(
        higher_is_better):
    """The same mean, 0.2 short of the target: pieces that agree say so after three; pieces
    that differ (a set like the toy loss task's, 20-44% between a quarter and the whole)
    cannot, and the point reads the whole set."""
    seen: list[torch.Tensor] = []
    task = metric_task(evaluated=seen)
    target = 0.8 if higher_is_better else 0.4
    cpu = torch.device("cpu")
    agree = slow(Evaluator(task, target, higher_is_better))
    metric, full = agree(Values(spread_values(256, 0.6, 0.01)), cpu, final=False)
    assert full is False and len(seen) == FIRST_LOOK and metric == pytest.approx(0.6, abs=0.01)
    assert sum(len(r) for r in seen) == 3 * 32  # three pieces of 32, not the set
    seen.clear()
    differ = slow(Evaluator(task, target, higher_is_better))
    metric, full = differ(Values(spread_values(256, 0.6, 2.0)), cpu, final=False)
    assert full is True and metric == pytest.approx(0.6)
    assert [len(r) for r in seen] == [32] * last_look(8) + [256]  # half the pieces, the set
    seen.clear()
    metric, full = agree(Values(spread_values(256, 0.6, 0.01)), cpu, final=True)
    assert full is True and [len(r) for r in seen] == [256]  # the trial's last point
    assert (agree.full_points, agree.quick_points) == (1, 1)


def test_a_task_metric_at_its_target_reads_the_whole_set_and_points_rotate_the_pieces():
    seen: list[torch.Tensor] = []
    task = metric_task(evaluated=seen)
    cpu = torch.device("cpu")
    ev = slow(Evaluator(task, 0.6, True))
    assert ev(Values(spread_values(256, 0.6, 0.01)), cpu, final=False) == \
        (pytest.approx(0.6), True)  # at the target: the pieces cannot say short
    slow(ev)
    model = Values(spread_values(256, 0.1, 0.01))
    firsts = []
    for _ in range(CUSTOM_PIECES):
        seen.clear()
        ev(model, cpu, final=False)
        firsts.append(seen[0])
    # each point starts FIRST_LOOK pieces on: over 8 points every piece is read first once
    assert sorted(int(r.min()) for r in firsts) == sorted(
        int(p.validation[0].min()) for p in ev.metric_pieces)


def test_a_task_metric_is_read_whole_once_its_pieces_show_the_set_is_cheap(monkeypatch):
    seen: list[torch.Tensor] = []
    cpu = torch.device("cpu")
    far = Values(spread_values(256, 0.1, 0.01))
    ev = Evaluator(metric_task(evaluated=seen), 0.6, True)
    # the first point reads pieces (their time, x 8/3, estimates the whole set's)...
    assert ev(far, cpu, final=False)[1] is False
    assert 0 < ev.whole_seconds < CHEAP_READ_S
    for _ in range(2):  # ...which reads in well under CHEAP_READ_S: whole from then on
        assert ev(far, cpu, final=False)[1] is True
    assert [len(r) for r in seen] == [32] * FIRST_LOOK + [256] * 2
    seen.clear()
    monkeypatch.setattr(evaluation, "CHEAP_READ_S", 0.0)  # every read is "slow" now
    ev = Evaluator(metric_task(evaluated=seen), 0.6, True)
    for _ in range(2):
        assert ev(far, cpu, final=False)[1] is False  # pieces, point after point
    assert [len(r) for r in seen] == [32] * FIRST_LOOK * 2


def test_a_task_metric_exactly_at_its_target_is_called_short_about_one_time_in_30():
    """The rule's error, simulated: sets of 256 whose whole-set metric is exactly the target
    (normal, 0/1 and skewed values), split at random, read from a random first piece. A
    wrong "short" delays a crossing by one point; the docstring's one in 30."""
    g = torch.Generator().manual_seed(0)
    ev = Evaluator(metric_task(), 0.0, False)
    pieces = ev.metric_pieces
    wrong = runs = 0
    for draw in (lambda: torch.randn(256, generator=g, dtype=torch.float64),
                 lambda: (torch.rand(256, generator=g, dtype=torch.float64) < 0.3).double(),
                 lambda: -torch.log(torch.rand(256, generator=g, dtype=torch.float64))):
        for _ in range(700):
            values = draw()
            ev.target = float(values.mean())
            ev.metric_pieces = [pieces[int(i)] for i in torch.randperm(CUSTOM_PIECES, generator=g)]
            wrong += ev._metric_by_pieces(Values(values), torch.device("cpu")) is not None
            runs += 1
    assert 0.01 < wrong / runs < 0.05


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
