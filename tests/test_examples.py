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


def test_search_from_python_example_finds_a_winner_and_writes_its_files(tmp_path, capsys):
    from examples.search_from_python import main

    assert main(str(tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert "winner: trial" in out and "speedup" in out
    assert (tmp_path / "run" / "best_recipe.yaml").exists()
    assert (tmp_path / "run" / "study.journal").exists()
