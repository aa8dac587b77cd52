"""Winner selection, medians over seeds, confirmation points and the stopping rule: pure
functions of the records, tested without a search."""

import pytest

from autotune import objective
from autotune.results import TrialRecord
from autotune.search._scheduler import cannot_win
from autotune.search.winner import confirm_points, summarize

REACHED, NOT_REACHED = objective.REACHED, objective.NOT_REACHED


def rec(trial, tta=None, status=None, rerun_of=None, seed=0, recipe=None, baseline=False,
        train_seconds=10.0):
    status = status or (REACHED if tta is not None else NOT_REACHED)
    return TrialRecord(trial=trial, status=status, tta_seconds=tta, rerun_of=rerun_of,
                       seed=seed, recipe=recipe or {"id": rerun_of or trial},
                       params={"id": rerun_of or trial}, is_baseline=baseline,
                       train_seconds=train_seconds)


def test_the_winner_is_the_lowest_median_and_an_unreached_run_counts_as_slowest():
    records = [
        rec(1, 11.0, baseline=True), rec(2, 2.0), rec(3, 5.0),
        # trial 2 was lucky: its other two seeds did not reach the target -> median inf
        rec(4, None, rerun_of=2, seed=1), rec(5, None, rerun_of=2, seed=2),
        rec(6, 4.0, rerun_of=3, seed=1), rec(7, 3.0, rerun_of=3, seed=2),
        rec(8, 9.0, rerun_of=1, seed=1), rec(9, 10.0, rerun_of=1, seed=2),
    ]
    summary = summarize(records)
    assert summary.best.record.trial == 3
    assert summary.best.tta_runs == [5.0, 4.0, 3.0] and summary.best.tta_seconds == 4.0
    assert summary.best.tta_spread == [3.0, 5.0]
    assert summary.baseline.tta_seconds == 10.0
    assert summary.speedup == pytest.approx(10.0 / 4.0)
    assert not summary.speedup_is_lower_bound


def test_one_unreached_seed_of_three_still_has_a_median_but_no_full_spread():
    records = [rec(1, 6.0, baseline=True), rec(2, 2.0),
               rec(3, None, rerun_of=2, seed=1), rec(4, 3.0, rerun_of=2, seed=2)]
    best = summarize(records).best
    assert best.tta_seconds == 3.0 and best.tta_spread == [2.0, None]


def test_confirmed_recipes_rank_ahead_of_a_faster_unconfirmed_one():
    records = [rec(1, 8.0, baseline=True), rec(2, 3.0), rec(3, 1.0),
               rec(4, 3.5, rerun_of=2, seed=1)]
    assert summarize(records).best.record.trial == 2


def test_an_unreached_baseline_gives_a_lower_bound_from_its_training_time():
    records = [rec(1, None, baseline=True, train_seconds=30.0), rec(2, 5.0)]
    summary = summarize(records)
    assert summary.speedup == pytest.approx(6.0) and summary.speedup_is_lower_bound
    assert summary.speedup_text() == ">= 6.00x"


def test_no_trial_reached_means_no_winner():
    summary = summarize([rec(1, None, baseline=True), rec(2, None)])
    assert summary.best is None and summary.speedup is None


def test_confirmation_points_cover_the_top_distinct_recipes_and_the_baseline():
    records = [rec(1, 9.0, baseline=True), rec(2, 2.0, recipe={"a": 1}),
               rec(3, 2.5, recipe={"a": 1}),  # the same recipe again: confirmed once
               rec(4, 3.0), rec(5, None), rec(6, 4.0)]
    points = confirm_points(records, top=2, seeds=2, seed=10, max_train_seconds=60.0)
    # seed by seed, fastest recipe first: a cut for time leaves each recipe as many seeds
    assert [(p["_rerun_of"], p["_seed"]) for p in points] == [
        (2, 11), (4, 11), (1, 11), (2, 12), (4, 12), (1, 12)]
    limits = {p["_rerun_of"]: p["_max_train_seconds"] for p in points}
    assert limits == {2: 7.0, 4: 10.0, 1: 28.0}  # 3x the original's TTA + 1 s
    assert all(p["id"] == p["_rerun_of"] for p in points)  # the original's params


def test_confirmation_points_skip_seeds_already_run_and_interrupted_ones_run_again():
    records = [rec(1, 9.0, baseline=True), rec(2, 2.0),
               rec(3, 2.2, rerun_of=2, seed=1),
               rec(4, None, status=objective.INTERRUPTED, rerun_of=2, seed=2)]
    points = confirm_points(records, top=1, seeds=2, seed=0, max_train_seconds=60.0)
    assert [(p["_rerun_of"], p["_seed"]) for p in points] == [(1, 1), (2, 2), (1, 2)]
    assert confirm_points(records, top=0, seeds=2, seed=0, max_train_seconds=60.0) == []


def test_a_trial_that_cannot_win_anymore_is_stopped():
    assert cannot_win({"train_seconds": 16.0, "status": "running"}, best_tta=10.0,
                      time_margin=1.5)
    assert not cannot_win({"train_seconds": 14.0, "status": "running"}, best_tta=10.0,
                          time_margin=1.5)
    assert not cannot_win({"train_seconds": 16.0, "status": REACHED}, 10.0, 1.5)
    assert not cannot_win({"train_seconds": 99.0, "status": "running"}, None, 1.5)
