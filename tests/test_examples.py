"""The shipped examples work as documented."""

from autotune.recipe import baseline_recipe
from autotune.space import load_space
from autotune.tasks import load_task
from autotune.train import TrialLimits, run_trial


def test_custom_task_example_trains_to_its_target_and_fits_its_space():
    task = load_task("examples.custom_task:make_task", options={"hidden": 32})
    baseline = baseline_recipe(task.default_batch_size, task.default_lr)
    space = load_space("examples/custom_space.yaml")
    space.point_for(baseline)
    result = run_trial(task, baseline, TrialLimits.for_task(task))
    assert result.status == "reached", result.message
