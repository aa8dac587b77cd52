"""Pipeline parallelism (``autotune.train.pipeline``): the contract (one step with 2 stages over
gloo equals the single-process step), a real trial, what cannot be split, the knobs it refuses,
and the per-stage memory prediction."""

from __future__ import annotations

import dataclasses
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from autotune import objective
from autotune.knobs import build_optimizer, build_scheduler, optimizer_step, unsupported_reason
from autotune.memory import predict_peak
from autotune.recipe import Recipe
from autotune.tasks import load_task
from autotune.train import TrialLimits, run_trial
from autotune.train.pipeline import split_points, split_problem
from tests import pipeline_worker as w

STAGES = 2
LR = 2.0
"""Plain SGD (no momentum): the step is ``lr * gradient``, so a pipeline that summed its
pieces' gradients instead of averaging them, or lost the tied head's share of the embedding's
gradient, moves the weights by a different amount (Adam's first step, about ``lr * sign(g)``,
could not tell)."""
CLIP = 5.0
"""Below the contract step's gradient norm (about 22, measured), so the clipped step is a
quarter of the unclipped one: a stage that clipped by its own norm instead of the global one
would be far off. The test checks that the reference did clip."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_step(recipe: Recipe) -> tuple[dict[str, torch.Tensor], float, float | None]:
    """The single-process step on the same micro-batches: parameters after it, the mean
    loss, and the gradient norm it clipped by (None without ``grad_clip``)."""
    model = w.initial_model()
    opt = build_optimizer(model.parameters(), recipe)
    norms: list[torch.Tensor] = []
    loss = optimizer_step(model, w.loss, w.micro_batches(recipe.accumulation_steps), opt,
                          build_scheduler(opt, recipe), recipe, "cpu", grad_norm=norms.append)
    state = {n: p.detach().float() for n, p in model.named_parameters()}
    return state, loss, float(norms[0]) if norms else None


def pipeline_recipe(schedule: str, **changes: object) -> Recipe:
    return Recipe.from_dict({
        "parallelism": "pipeline", "workers": STAGES, "batch_size": w.BATCH,
        "pipeline_microbatches": 2, "pipeline_schedule": schedule, "optimizer": "sgd",
        "momentum": 0.0, "weight_decay": 0.0, "lr": LR, **changes})


CASES = {
    # Each in one start of the workers (most of a case's time on 2 cores is that start).
    "accumulation-clip": [pipeline_recipe("gpipe", accumulation_steps=2, grad_clip=CLIP),
                          pipeline_recipe("1f1b", accumulation_steps=2, grad_clip=CLIP)],
    "plain-bf16": pytest.param([pipeline_recipe("gpipe"),
                                pipeline_recipe("1f1b", precision="bf16")],
                               marks=pytest.mark.slow),
}


@pytest.mark.distributed
@pytest.mark.parametrize("recipes", CASES.values(), ids=CASES.keys())
def test_one_pipeline_step_matches_the_single_process_step(recipes, tmp_path):
    out = tmp_path / "states.pt"
    mp.spawn(w.step_in_pipeline,
             args=(STAGES, free_port(), [r.to_dict() for r in recipes], str(out)),
             nprocs=STAGES, join=True)
    for recipe, saved in zip(recipes, torch.load(out), strict=True):
        check_step(recipe, saved)


def check_step(recipe: Recipe, saved: dict) -> None:
    """The pipeline's step (``saved``) is the single-process step of ``recipe``."""
    single = recipe.replace(parallelism="single", workers=1, pipeline_microbatches=4,
                            pipeline_schedule="gpipe")
    expected, loss, norm = reference_step(single)
    case = recipe.describe()
    if recipe.grad_clip > 0:
        assert norm is not None and norm > 1.25 * recipe.grad_clip, norm
        assert saved["grad_norm"] == pytest.approx(norm, rel=1e-4), case
    bf16 = recipe.precision == "bf16"
    assert saved["loss"] == pytest.approx(loss, rel=1e-2 if bf16 else 1e-5), case
    before = {n: p.detach() for n, p in w.initial_model().named_parameters()}
    got = saved["params"]
    assert got.keys() == expected.keys()
    for name in expected:
        moved = (expected[name] - before[name]).norm()
        assert moved > 1e-3, f"the reference step did not move {name}"
        error = float((got[name] - expected[name]).norm() / moved)
        assert error < (1e-2 if bf16 else 1e-4), f"{case}: {name} off by {error:.2e} of its step"


@pytest.mark.distributed
def test_a_pipeline_trial_trains_to_its_target_and_records_it():
    task = load_task("tests.pipeline_worker:make_task")
    recipe = Recipe(parallelism="pipeline", workers=2, batch_size=32, lr=3e-2,
                    pipeline_microbatches=4, pipeline_schedule="1f1b", accumulation_steps=2,
                    grad_clip=1.0)
    result = run_trial(task, recipe, TrialLimits.for_task(task))
    assert result.status == objective.REACHED, result.message
    assert result.best_metric >= task.target and result.curve
    # Both stages take the same batches: a step is batch_size x accumulation examples.
    assert result.examples == result.steps * 32 * 2
    assert result.tracked_peak_bytes and result.predicted_peak_bytes


def test_split_points_are_evenly_spaced():
    assert split_points(4, 2) == [2]
    assert split_points(12, 4) == [3, 6, 9]
    assert split_points(5, 2) == [2]


def test_a_model_without_blocks_or_with_too_few_cannot_be_split():
    assert "no ModuleList" in split_problem(nn.Sequential(nn.Linear(2, 2)), 2)
    assert "at least 5 blocks" in split_problem(w.TiedBlockNet(), 5)
    assert split_problem(w.TiedBlockNet(), 4) is None


@pytest.mark.slow
@pytest.mark.distributed
def test_a_pipeline_of_an_unsplittable_model_is_infeasible_with_the_reason():
    task = load_task("tests.toy_task:make_task")  # nn.Sequential: no ModuleList
    result = run_trial(task, Recipe(parallelism="pipeline", workers=2, batch_size=32),
                       TrialLimits.for_task(task))
    assert result.status == objective.INFEASIBLE
    assert "no ModuleList" in result.message and result.steps == 0


@pytest.mark.parametrize(("changes", "words"), [
    ({"precision": "fp16"}, "loss scaler"),
    ({"compile": "default"}, "compile"),
    ({"checkpointing": True}, "checkpointing"),
    ({"weight_sparsity": 0.5}, "weight_sparsity"),
])
def test_knobs_pipeline_does_not_combine_with_are_refused_with_the_reason(changes, words):
    recipe = Recipe.from_dict({"parallelism": "pipeline", "workers": 2, **changes})
    reason = unsupported_reason(recipe, "cpu")
    assert reason and words in reason
    assert unsupported_reason(Recipe(parallelism="pipeline", workers=2), "cpu") is None


def test_the_biggest_stage_is_predicted_below_one_device_and_1f1b_below_gpipe():
    # Evaluation in batches of 4: the training step is the peak this test compares.
    task = dataclasses.replace(w.make_task(), eval_batch_size=4)
    single = predict_peak(task, Recipe(batch_size=32))
    gpipe = predict_peak(task, Recipe(parallelism="pipeline", workers=2, batch_size=32,
                                      pipeline_microbatches=8))
    one_f = predict_peak(task, Recipe(parallelism="pipeline", workers=2, batch_size=32,
                                      pipeline_microbatches=8, pipeline_schedule="1f1b"))
    assert gpipe.peak_bytes < single.peak_bytes
    # 1F1B holds 2 of the 8 pieces' activations at once; GPipe all 8.
    assert one_f.activations_bytes * 3 < gpipe.activations_bytes
    assert one_f.peak_bytes < gpipe.peak_bytes
    # Each worker keeps every weight (the full model, for evaluation); a stage's share of
    # the gradients and optimizer state.
    assert gpipe.parameters_bytes == single.parameters_bytes
    assert gpipe.optimizer_bytes < single.optimizer_bytes
    assert gpipe.parallelism == "pipeline" and "pipeline x2" in gpipe.method


def test_exports_say_what_a_pipeline_recipe_needs():
    from autotune.export import hf_unsupported, torchrun_command

    recipe = Recipe(parallelism="pipeline", workers=2, batch_size=32, accumulation_steps=2,
                    pipeline_schedule="1f1b")
    command = torchrun_command(recipe)
    assert "--nproc-per-node=2" in command and "Schedule1F1B" in command
    # The stages share each batch: 32 x 2 examples a step, not x 2 workers.
    assert "64 examples per optimizer step" in command
    assert any("no pipeline parallelism" in line for line in hf_unsupported(recipe))
    assert not any("pipeline" in line for line in hf_unsupported(Recipe()))
