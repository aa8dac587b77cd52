"""A metric that must go down (a validation loss): the trial, the score, the scheduler, the
confirmation and the files all follow the task's direction; a broken metric fails its trial
with a message naming the user's function."""

import json

import pytest
import yaml

from autotune import objective
from autotune.recipe import Recipe
from autotune.search import SearchRequest, search
from autotune.train import TrialLimits, run_trial
from tests.toy_task import make_loss_task


def _limits(**changes) -> TrialLimits:
    """An evaluation after every step (the trial's clock decides when to evaluate, so a fast
    machine must not get past the target before the first one), direction: lower is better."""
    return TrialLimits(**{"max_train_seconds": 30.0, "eval_every_seconds": 1e-6,
                          "target": 0.3, "higher_is_better": False, **changes})


def test_a_lower_is_better_trial_reaches_its_target_going_down():
    task = make_loss_task(target=0.3)
    result = run_trial(task, Recipe(lr=1e-2), _limits())
    assert result.status == objective.REACHED, result.message
    values = [v for _, v in result.curve]
    assert values[-1] <= 0.3 < values[0]  # it went down to the target, not up
    assert result.best_metric == min(values)
    assert result.tta_seconds == pytest.approx(result.curve[-1][0], abs=1e-3)


def test_a_lower_is_better_trial_that_stays_high_is_not_reached_with_the_right_words():
    task = make_loss_task(target=0.3)
    result = run_trial(task, Recipe(lr=1e-4), _limits(max_steps=30))
    assert result.status == objective.NOT_REACHED
    assert result.best_metric == min(v for _, v in result.curve) > 0.3
    assert "> target 0.3" in result.message
    # its score ranks it by how close it came: a trial that got lower scores better
    closer = objective.score(objective.NOT_REACHED, None, 0.35, 0.3, 5.0, False)
    farther = objective.score(objective.NOT_REACHED, None, 0.6, 0.3, 5.0, False)
    assert closer < farther <= 3.0 * 5.0
    assert result.score == pytest.approx(objective.score(
        objective.NOT_REACHED, None, result.best_metric, 0.3, 30.0, False))


def test_scores_in_both_directions_are_the_distance_to_the_target():
    assert objective.score("not_reached", None, 0.8, 1.0, 10.0, True) == pytest.approx(22.0)
    assert objective.score("not_reached", None, 1.2, 1.0, 10.0, False) == pytest.approx(22.0)
    # past the target in the other direction is no distance at all
    assert objective.score("stopped", None, 0.8, 1.0, 10.0, False) == pytest.approx(20.0)
    assert objective.score("stopped", None, None, 1.0, 10.0, False) == pytest.approx(30.0)
    assert objective.reaches(0.29, 0.3, False) and not objective.reaches(0.31, 0.3, False)


@pytest.mark.parametrize("broken", ["nan", "text", "raise"])
def test_a_broken_metric_fails_the_trial_naming_the_users_function(broken):
    task = make_loss_task(broken_metric=broken)
    result = run_trial(task, Recipe(lr=1e-2), TrialLimits.for_task(task))
    assert result.status == objective.ERROR
    assert "evaluate function tests.toy_task.make_loss_task.<locals>.val_loss" in result.message
    assert ("raised KeyError" if broken == "raise" else "must return one finite number") \
        in result.message


@pytest.mark.slow  # ~35-60 s: kept out of the default tier (under 15 min)
def test_a_lower_is_better_search_stops_the_worse_trial_and_confirms_the_winner(tmp_path):
    """The baseline (lr 1e-2, its loss falls) runs first; the warm start (lr 1e-6, its loss
    stays high) is behind it at ASHA's first rung and is stopped there: in the metric's
    direction a higher loss is worse. The target is out of reach, so only ASHA ends trials
    early. Then a reachable target: the winner is confirmed with another seed and the files say
    the metric goes down."""
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  lr: {choices: [0.000001, 0.01]}\n")
    outcome = search(SearchRequest(
        model="tests.toy_task:make_loss_task", task_options={"suggest": {"lr": 1e-6}},
        task_warm_start=True,
        target=0.01, space=str(space), trials=2, confirm_top=0, max_trial_seconds=2.0,
        grace_period_s=0.3, report_interval_s=0.1, results_dir=str(tmp_path / "unreachable"),
        # one at a time: the baseline's rungs are recorded before the warm start reaches them
        # (side by side, whichever reaches a rung first is alone there and goes on)
        max_concurrent_trials=1))
    by_lr = {r.recipe["lr"]: r for r in outcome.records}
    assert by_lr[1e-2].status == objective.NOT_REACHED, by_lr[1e-2].message
    # lr 1e-6 (not 1e-4, which also gets near 0.22 in the 8,000 steps of a trial here) is
    # behind at every rung, whichever rung its first report under load lands on
    assert by_lr[1e-6].status == objective.STOPPED, by_lr[1e-6].message
    assert by_lr[1e-6].best_metric > by_lr[1e-2].best_metric

    outcome = search(SearchRequest(
        model="tests.toy_task:make_loss_task", space=str(space), trials=1, confirm_top=1,
        confirm_seeds=1, results_dir=str(tmp_path / "run")))
    best = outcome.summary.best
    assert best is not None and best.confirmed and best.record.recipe["lr"] == 1e-2
    assert all(r.best_metric <= 0.3 for r in best.runs)
    doc = yaml.safe_load(outcome.best_recipe_path.read_text())
    assert doc["task"]["higher_is_better"] is False and doc["task"]["metric"] == "val_loss"
    records = [json.loads(x) for x in (outcome.run_dir / "trials.jsonl").read_text().splitlines()]
    assert all(r["status"] == objective.REACHED for r in records)
