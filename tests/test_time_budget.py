"""The time budget is a promise: the whole search ends within ``--time-budget`` (plus the time
to stop what runs). The phases' times, the confirmation runs that fit, the schedulers' stop at
a deadline (pure, no search), and one real search with a small budget."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import yaml
from ray.tune.schedulers import TrialScheduler

from autotune import objective
from autotune.results import TrialRecord
from autotune.search import SearchRequest, search
from autotune.search._run import END_MARGIN_S, search_times
from autotune.search._scheduler import Deadline, DeadlineFIFO, TimeAwareASHA
from autotune.search.settings import CONFIRM_SHARE
from autotune.search.winner import confirm_points, fit_in_time, summarize


def test_the_phases_split_the_budget_and_leave_the_margin_for_the_results():
    t = search_times(start=1000.0, budget_s=480.0, confirming=True, grace_s=6.0)
    assert t.end == 1000.0 + 480.0 - END_MARGIN_S
    assert t.search_end == pytest.approx(1000.0 + 480.0 * (1 - CONFIRM_SHARE / 2))
    assert t.proposals_end == pytest.approx(1000.0 + 480.0 * (1 - CONFIRM_SHARE))
    alone = search_times(start=0.0, budget_s=60.0, confirming=False, grace_s=10.0)
    assert alone.search_end == alone.end == 60.0 - END_MARGIN_S
    assert alone.proposals_end == alone.end - 10.0  # a last trial can reach ASHA's first rung
    tiny = search_times(start=0.0, budget_s=3.0, confirming=True, grace_s=10.0)
    assert tiny.proposals_end == 0.0 and tiny.end == 0.0  # never before the start


def _rec(trial, tta, wall, baseline=False, rerun_of=None, seed=0, status=None):
    return TrialRecord(trial=trial, status=status or objective.REACHED, tta_seconds=tta,
                       recipe={"id": trial}, params={"id": trial}, is_baseline=baseline,
                       rerun_of=rerun_of, seed=seed, started_at=100.0,
                       finished_at=100.0 + wall, train_seconds=tta)


def test_confirmation_keeps_the_runs_that_end_in_time_seed_by_seed():
    records = [_rec(1, 9.0, 12.0, baseline=True), _rec(2, 2.0, 5.0), _rec(3, 3.0, 6.0)]
    points = confirm_points(records, top=2, seeds=2, seed=0, max_train_seconds=60.0)
    assert [(p["_rerun_of"], p["_seed"]) for p in points] == [
        (2, 1), (3, 1), (1, 1), (2, 2), (3, 2), (1, 2)]
    # one slot, 30 s: 5 + 6 + 12 = 23 s for the first seed of each; then 5 more fits (28 s)
    kept, cut = fit_in_time(points, records, seconds=30.0, concurrency=1)
    assert [(p["_rerun_of"], p["_seed"]) for p in kept] == [(2, 1), (3, 1), (1, 1), (2, 2)]
    assert [(p["_rerun_of"], p["_seed"]) for p in cut] == [(3, 2), (1, 2)]
    # two slots, each run on the slot free first: 5+12 on one, 6+5+6 on the other; the last
    # baseline run (12 s more) fits only with 29 s
    kept, cut = fit_in_time(points, records, seconds=23.0, concurrency=2)
    assert [(p["_rerun_of"], p["_seed"]) for p in cut] == [(1, 2)]
    assert fit_in_time(points, records, seconds=29.0, concurrency=2) == (points, [])
    assert fit_in_time(points, records, seconds=4.0, concurrency=4) == ([], points)


def test_a_rerun_stopped_at_the_time_budget_is_left_out_not_counted_as_a_miss():
    records = [_rec(1, 9.0, 12.0, baseline=True), _rec(2, 2.0, 5.0),
               _rec(4, 2.4, 5.0, rerun_of=2, seed=1),
               _rec(5, None, 5.0, rerun_of=2, seed=2, status=objective.STOPPED)]
    best = summarize(records).best
    assert best.record.trial == 2 and best.tta_runs == [2.0, 2.4]
    # and the seed it did not finish is still to do when the search resumes
    points = confirm_points(records, top=1, seeds=2, seed=0, max_train_seconds=60.0)
    assert (2, 2) in [(p["_rerun_of"], p["_seed"]) for p in points]


@pytest.mark.parametrize("make", [
    lambda d: DeadlineFIFO(d),
    lambda d: TimeAwareASHA(60.0, 5.0, 1.5, deadline=d),
], ids=["fifo", "asha"])
def test_the_schedulers_stop_a_running_trial_once_the_deadline_passed(make):
    trial = SimpleNamespace(trial_id="t1", status="RUNNING", config={}, evaluated_params={})
    stopped: set[str] = set()
    scheduler = make(Deadline(time.time() + 3600, stopped))
    scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, trial, {"train_seconds": 1.0, "best_metric": 0.5,
                                                   "training_iteration": 1}) \
        != TrialScheduler.STOP
    assert stopped == set()
    scheduler.deadline.at = time.time() - 1
    assert scheduler.on_trial_result(None, trial, {"train_seconds": 2.0, "best_metric": 0.5,
                                                   "training_iteration": 2}) \
        == TrialScheduler.STOP
    assert stopped == {"t1"}


@pytest.mark.distributed
def test_a_search_with_a_small_budget_ends_within_it(tmp_path):
    """A target no trial reaches, trials allowed longer than the budget: the search still
    ends in time, and its records say which trials the budget stopped."""
    budget = 20.0
    began = time.time()
    outcome = search(SearchRequest(
        model="tests.toy_task:make_task", target=1.5,  # accuracy never gets there
        max_trial_seconds=30.0, trials=3, time_budget_s=budget, seed=0,
        results_dir=str(tmp_path / "run"), report_interval_s=1.0))
    wall = time.time() - began
    assert wall <= budget + 3.0, wall  # the stop itself: a report (1 s) and Ray's shutdown
    doc = yaml.safe_load((tmp_path / "run" / "search.yaml").read_text())
    assert doc["search"]["within_time_budget"] is True
    assert doc["search"]["wall_seconds"] <= budget
    for_time = [r for r in outcome.records if "time budget" in (r.message or "")]
    assert for_time and all(r.status == objective.STOPPED for r in for_time)
    assert all(r.train_seconds < 20.0 for r in outcome.records if r.train_seconds)
