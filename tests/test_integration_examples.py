"""The ``--trainer`` and ``--function`` examples (``examples/hf_trainer_bert.py``,
``examples/plain_loop.py``) work as documented: their factory and function pass the checks a
search makes, and a short trial of each trains on the real sentences. ``slow``: about 10 s
each on an idle 2-core CPU (the sentences, BERT-tiny, a 2,000-sentence evaluation)."""

from __future__ import annotations

import pytest
import yaml

from autotune import objective
from autotune.integrations import function_task, trainer_task
from autotune.integrations.hf_trainer import recipe_from_training_arguments
from autotune.recipe import baseline_recipe
from autotune.train import TrialLimits, run_trial


@pytest.mark.slow
def test_the_trainer_example_passes_the_checks_and_trains():
    task = trainer_task("examples.hf_trainer_bert:make_trainer", metric="eval_accuracy",
                        target=0.75, direction="max",
                        baseline_args="examples/hf_trainer_args.yaml")
    assert task.metric == "eval_accuracy" and task.is_dataset
    own = yaml.safe_load(open("examples/hf_trainer_args.yaml"))
    assert task.baseline == recipe_from_training_arguments(own)
    assert (task.baseline.batch_size, task.baseline.lr) == (32, 5e-4)
    limits = TrialLimits(max_train_seconds=60, eval_every_seconds=1e9, target=0.75, max_steps=30)
    result = run_trial(task, task.baseline, limits, device="cpu")
    assert result.status == objective.NOT_REACHED and result.steps == 30, result.message
    assert 0.4 < result.curve[-1][1] < 0.75


@pytest.mark.slow
def test_the_plain_loop_example_trains_through_the_function_api():
    task = function_task("examples.plain_loop:train", metric="accuracy", target=0.75,
                         batch_size=32, lr=5e-4)
    limits = TrialLimits(max_train_seconds=60, eval_every_seconds=1e9, target=0.75, max_steps=30)
    result = run_trial(task, baseline_recipe(32, 5e-4), limits, device="cpu")
    assert result.status == objective.NOT_REACHED and result.steps == 30, result.message
    assert result.examples == 32 * result.steps and 0.4 < result.curve[-1][1] < 0.75

