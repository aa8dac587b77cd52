"""``--function``: any training loop as ``fn(recipe, ctx)`` (``autotune.integrations.function``),
timed, stopped and recorded by autotune; the loops are in ``tests/function_trainable.py``."""

from __future__ import annotations

import json
import time

import pytest

from autotune import objective
from autotune.cli import main
from autotune.errors import UserError
from autotune.integrations import INTEGRATION_KEY, function_task, load_any_task
from autotune.integrations.function import run_function
from autotune.recipe import Recipe
from autotune.search import SearchRequest
from autotune.train import TrialLimits, run_trial
from tests import function_trainable

LINEAR = "tests.function_trainable:train_linear"


def _run(fn: object, recipe: Recipe | None = None, **limits: object):
    base = dict(max_train_seconds=5.0, eval_every_seconds=0.1, target=0.9, seed=0)
    task = function_task(fn, metric="accuracy", target=0.9)  # type: ignore[arg-type]
    return run_trial(task, recipe or Recipe(batch_size=32, lr=1e-2),
                     TrialLimits(**{**base, **limits}), device="cpu")  # type: ignore[arg-type]


def test_a_plain_loop_reaches_the_target_and_is_recorded():
    reports: list[dict] = []
    task = function_task(LINEAR, metric="accuracy", target=0.95, eval_every_seconds=0.05)
    limits = TrialLimits(max_train_seconds=30.0, eval_every_seconds=0.05, target=0.95,
                         predicted_peak_bytes=123_456)  # what the search's memory gate said
    result = run_trial(task, Recipe(batch_size=16, lr=1e-3), limits, report=reports.append,
                       device="cpu")
    assert result.status == objective.REACHED, result.message
    assert len(result.curve) >= 2, result.curve
    assert result.tta_seconds == pytest.approx(result.curve[-1][0], abs=1e-4)
    assert result.curve[-1][1] >= 0.95
    assert all(value < 0.95 for _, value in result.curve[:-1])  # the first that reaches it
    assert result.steps > 0 and result.examples == 16 * result.steps
    assert result.peak_memory_bytes > 0 and result.score == result.tta_seconds
    assert reports[-1]["final"] and reports[-1]["status"] == objective.REACHED
    # every report carries the memory: a trial the scheduler stops is recorded from one
    assert all(r["peak_memory_bytes"] > 0 for r in reports) and len(reports) >= 2
    assert result.predicted_peak_bytes == 123_456


def test_evaluation_time_is_measured_not_counted_and_stretches_the_schedule():
    """Each evaluation sleeps 0.3 s inside ctx.evaluating(): the clock leaves it out, and the
    next point waits until the trial's evaluations are at most a quarter of its training (the
    k+1-th point after k x 0.3 / 0.25 = k x 1.2 s), as autotune's own loop does
    (autotune.train.evaluation.paced_point)."""
    began = time.perf_counter()
    result = _run(function_trainable.train_with_slow_evaluation, target=1.01,
                  max_train_seconds=3.0, eval_every_seconds=0.2)
    wall = time.perf_counter() - began
    times = [t for t, _ in result.curve]
    assert result.status == objective.NOT_REACHED and len(times) >= 3, times
    assert result.eval_seconds >= 0.3 * len(times)
    assert 3.0 <= result.train_seconds < wall - result.eval_seconds
    # the training clock is the function's wall time from ctx.start() less its evaluations
    trained = function_trainable.WALL["end"] - function_trainable.WALL["start"]
    assert result.train_seconds == pytest.approx(trained - result.eval_seconds, abs=0.15)
    assert times[0] >= 0.2
    assert all(t >= k * 1.2 for k, t in enumerate(times[:-1])), times  # last: the limit


def test_the_recipe_reaches_the_function():
    seen: list[Recipe] = []

    def keep(recipe: Recipe, ctx: object) -> None:
        seen.append(recipe)

    recipe = Recipe(precision="bf16", batch_size=8, accumulation_steps=4, lr=3e-3)
    _run(keep, recipe)
    assert seen == [recipe]


@pytest.mark.parametrize(("fn", "limit", "status", "message"), [
    (function_trainable.never_reports, 30.0, objective.ERROR, "returned after"),
    (function_trainable.never_reports_nor_returns, 0.5, objective.ERROR,
     "never reported 'accuracy'"),
    (function_trainable.crashes_after_a_report, 5.0, objective.ERROR,
     "raised ValueError: the user's data loader broke"),
    (function_trainable.reports_text, 5.0, objective.ERROR, "ctx.report takes one number"),
])
def test_a_function_that_goes_wrong_is_a_recorded_failure(fn, limit, status, message):
    result = _run(fn, max_train_seconds=limit)
    assert result.status == status and message in result.message, result.message


def test_what_was_measured_before_a_failure_is_kept():
    result = _run(function_trainable.crashes_after_a_report)
    assert result.curve and result.curve[0][1] == 0.5 and result.best_metric == 0.5


def test_a_decided_trial_stops_even_through_except_exception():
    function_trainable.CALLS.clear()
    result = _run(function_trainable.swallows_the_stop)
    assert result.status == objective.REACHED
    assert function_trainable.CALLS == []  # TrialStopped is no Exception


def test_a_multi_worker_recipe_outside_its_workers_is_refused():
    """Called in one process, not through run_trial's launcher (which starts its workers:
    tests/test_integration_workers.py), a 2-worker recipe says where it runs instead of
    training one copy."""
    result = run_function(function_trainable.train_linear, LINEAR, "accuracy",
                          Recipe(parallelism="ddp", workers=2),
                          TrialLimits(max_train_seconds=5.0, eval_every_seconds=0.5,
                                      target=0.9), device="cpu")
    assert result.status == objective.INFEASIBLE and "run_trial" in result.message
    assert result.steps == 0


def test_a_real_search_over_a_function(tmp_path, capsys):
    results = tmp_path / "run"
    code = main(["search", "--function", LINEAR, "--metric", "accuracy", "--target", "0.9",
                 "--task-option", "lr=0.01", "--trials", "2", "--max-trial-time", "15s",
                 "--eval-every", "0.1s", "--time-budget", "90s", "--confirm", "0",
                 "--results-dir", str(results), "-q"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (results / "trials.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[0]["recipe"]["lr"] == 0.01
    assert records[0]["status"] == objective.REACHED, records[0]["message"]
    # the second may be stopped early by the scheduler, if it falls behind
    assert all(r["status"] in (objective.REACHED, objective.STOPPED) for r in records), records
    header = (results / "best_recipe.yaml").read_text().splitlines()[:2]
    assert "--function tests.function_trainable:train_linear --metric accuracy" in header[0]
    assert "autotune.Recipe.load" in header[1]
    space = (results / "space.yaml").read_text()
    assert "autotune search --function tests.function_trainable:train_linear --metric " \
        "accuracy --target 0.9 --space PATH" in space


def test_the_function_must_exist():
    code = main(["search", "--function", "tests.function_trainable:nope", "--metric", "acc",
                 "--target", "0.9"])
    assert code == 2


def test_the_request_carries_the_integration_to_the_trials_and_through_a_resume():
    """What ``--resume`` reloads (settings.json) rebuilds the same options for the trials."""
    request = SearchRequest(model=LINEAR, integration="function", metric="accuracy",
                            target=0.9, direction="max", eval_every_s=0.5, max_trial_seconds=4,
                            task_options={"lr": 0.01})
    assert request.problems() == []
    options = request.integration_options()
    assert options == {"lr": 0.01, INTEGRATION_KEY: "function", "metric": "accuracy",
                       "target": 0.9, "direction": "max", "max_train_seconds": 4,
                       "eval_every_seconds": 0.5}
    again = SearchRequest.from_json(json.loads(json.dumps(request.to_json())))
    assert again == request and again.integration_options() == options
    # the driver replaces task_options with these; doing it twice changes nothing
    assert again.replace(task_options=options).integration_options() == options
    task = load_any_task(LINEAR, "cpu", options)
    assert (task.metric, task.target, task.eval_every_seconds, task.default_lr) == (
        "accuracy", 0.9, 0.5, 0.01)


def test_what_an_integration_needs_is_checked_at_once():
    problems = SearchRequest(model=LINEAR, integration="function", direction="up",
                             eval_every_s=0).problems()
    assert any("--function needs --metric" in p for p in problems)
    assert any("--function needs --target" in p for p in problems)
    assert any("--direction must be max" in p for p in problems)
    assert any("--eval-every must be > 0" in p for p in problems)
    with pytest.raises(UserError, match="unknown option batch"):
        load_any_task(LINEAR, "cpu", {INTEGRATION_KEY: "function", "metric": "a",
                                      "target": 0.5, "batch": 3})


def test_the_cpu_peak_is_the_trials_own_in_a_process_that_served_a_bigger_one():
    """A trial process serves trial after trial: a later trial's peak RSS is its own, not the
    process's since it started (else a small budget would fail every trial after a big one)."""
    def hog(recipe: Recipe, ctx: object) -> None:
        block = bytearray(400 * 10**6)  # 400 MB resident
        block[::4096] = b"x" * len(block[::4096])
        ctx.report(0.99)  # type: ignore[attr-defined]

    big = _run(hog)
    small = _run(function_trainable.crashes_after_a_report)
    assert big.peak_memory_bytes > small.peak_memory_bytes + 300 * 10**6
