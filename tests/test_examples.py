"""The shipped examples work as documented."""

import pytest

from autotune.recipe import baseline_recipe
from autotune.space import load_space
from autotune.tasks import load_task
from autotune.train import TrialLimits, run_trial


def test_custom_task_example_trains_to_its_target_and_fits_its_space():
    task = load_task("examples.custom_task:make_task", options={"hidden": 32})
    baseline = baseline_recipe(task.default_batch_size, task.default_lr)
    space = load_space("examples/custom_space.yaml")
    space.point_for(baseline)
    # 30 s rather than the example's 10 s limit: the example is documented to reach its
    # target, and this checks that, not its speed on a loaded test machine.
    result = run_trial(task, baseline, TrialLimits.for_task(task, max_train_seconds=30))
    assert result.status == "reached", result.message


@pytest.mark.slow  # ~40 s: a whole search; the default tier runs the Python API's searches
def test_search_from_python_example_finds_a_winner_and_writes_its_files(tmp_path, capsys):
    from examples.search_from_python import main

    assert main(str(tmp_path / "run")) == 0
    out = capsys.readouterr().out
    assert "winner: trial" in out and "speedup" in out
    assert (tmp_path / "run" / "best_recipe.yaml").exists()
    assert (tmp_path / "run" / "study.journal").exists()


def test_review_lm_example_is_a_dataset_task_that_trains_and_gets_the_loader_knobs():
    from autotune.default_space import default_space
    from autotune.recipe import Recipe
    from autotune.tasks import dry_run

    task = load_task("examples.review_lm:make_task")
    assert task.is_dataset and task.collate is not None and not task.higher_is_better
    baseline = baseline_recipe(task.default_batch_size, task.default_lr)
    dry_run(task, baseline.batch_size)
    space = default_space(baseline, "cpu", bf16_fast=False, source=task.name, dataset=True,
                          cpus=2)
    assert space.knob("dataloader_workers").choices == (0, 1, 2)
    recipe = Recipe(batch_size=16, lr=3e-3, dataloader_workers=1, persistent_workers=True)
    limits = TrialLimits(max_train_seconds=60, eval_every_seconds=1e9, target=0.1,
                         higher_is_better=False, max_steps=30)
    result = run_trial(task, recipe, limits)
    assert result.status == "not_reached", result.message
    assert result.curve[0][1] < 4.5  # from ln(256) = 5.5 nats per byte at the start
    assert result.loader_start_seconds > 0 and result.inactive_knobs == []
