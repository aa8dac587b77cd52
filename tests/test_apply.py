"""Applying a recipe in a user's own code: ``configure`` really applies each knob, ``fit`` is a
trial, and the shipped example runs."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import autotune
from autotune import objective
from autotune.apply import Configured, configure, fit
from autotune.errors import UserError
from autotune.knobs import prunable_weights, sparsity
from autotune.recipe import Recipe
from tests.toy_task import make_toy_task

ROOT = Path(__file__).resolve().parents[1]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return make_toy_task().build_model()


def test_example_script_trains_to_its_printed_threshold():
    proc = subprocess.run(
        [sys.executable, "examples/apply_recipe.py"], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"final accuracy ([\d.]+) \(expected >= ([\d.]+)\)", proc.stdout)
    assert match, proc.stdout
    assert float(match[1]) >= float(match[2]), proc.stdout


def test_public_api_is_lazy():
    code = (
        "import sys, autotune; assert 'torch' not in sys.modules; "
        "from autotune.apply import configure, fit, Configured; "
        "assert autotune.configure is configure and autotune.fit is fit; "
        "assert autotune.Configured is Configured"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_bf16_recipe_autocasts_and_fp16_adds_a_scaler():
    run = configure(Recipe(precision="bf16"), _model(), device="cpu")
    x = torch.randn(4, 16)
    with run.autocast():
        assert run.model(x).dtype == torch.bfloat16
    assert run.model[0].weight.dtype == torch.float32 and run.scaler is None
    assert run.device == torch.device("cpu") and run.model.training
    with configure(Recipe(), _model(), device="cpu").autocast():
        assert _model()(x).dtype == torch.float32
    assert isinstance(configure(Recipe(precision="fp16"), _model(), device="cpu").scaler,
                      torch.amp.GradScaler)


def test_weight_sparsity_zeroes_each_linear_weight_and_step_keeps_it():
    task = make_toy_task()
    run = configure(Recipe(weight_sparsity=0.3, lr=1e-2), _model(), device="cpu")
    weights = prunable_weights(run.model)
    for w in weights:
        assert float((w == 0).float().mean()) == pytest.approx(0.3, abs=0.01)
    assert set(run.masks) == set(weights)
    for i in range(3):
        run.step([[t[i * 16:(i + 1) * 16] for t in task.train]], task.loss)
    assert sparsity(weights) == pytest.approx(0.3, abs=0.005)


def test_scheduler_lr_follows_warmup_through_step():
    task = make_toy_task()
    run = configure(Recipe(lr=0.1, warmup_steps=4), _model(), device="cpu")
    seen = []
    for _ in range(6):
        seen.append(run.optimizer.param_groups[0]["lr"])
        run.step([[t[:16] for t in task.train]], task.loss)
    assert seen == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


@pytest.mark.parametrize(("name", "cls"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                           ("adamw", torch.optim.AdamW)])
def test_optimizer_type_and_lr(name, cls):
    run = configure(Recipe(optimizer=name, lr=0.05), _model(), device="cpu")
    assert type(run.optimizer) is cls and run.optimizer.param_groups[0]["lr"] == 0.05
    params = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in run.model.parameters()}


def test_accumulation_of_2x16_equals_one_batch_of_32():
    task = make_toy_task()
    batch = [t[:32] for t in task.train]
    before = [p.detach().clone() for p in _model().parameters()]
    moved = {}
    for accum in (1, 2):
        # Plain SGD: the update is lr * gradient, so it shows the gradient's scale (one Adam
        # step, about lr * sign(g), would not tell a sum of micro-batch gradients from a mean).
        recipe = Recipe(batch_size=32 // accum, accumulation_steps=accum, optimizer="sgd",
                        lr=0.5, momentum=0.0, weight_decay=0.0)
        run = configure(recipe, _model(), device="cpu")
        micro = run.split(batch)
        assert run.accumulation_steps == accum and len(micro) == accum
        assert [len(m[0]) for m in micro] == [32 // accum] * accum
        run.step(micro, task.loss)
        moved[accum] = [p.detach() - b for p, b in zip(run.model.parameters(), before)]
    for one, two in zip(moved[1], moved[2]):
        assert one.abs().max() > 1e-3  # the step moved every parameter visibly
        torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-6)


def test_nan_loss_raises_floating_point_error():
    run = configure(Recipe(), _model(), device="cpu")
    with pytest.raises(FloatingPointError, match="nan"):
        run.step([[torch.zeros(2, 16)]], lambda model, batch: model(batch[0]).sum() * torch.nan)


def test_multi_worker_recipe_is_a_user_error():
    with pytest.raises(UserError, match=r"autotune train.*autotune export --format"):
        configure(Recipe(parallelism="ddp", workers=2), _model())


def test_fit_trains_the_toy_task_to_its_target():
    task = make_toy_task()
    result = fit(Recipe(lr=1e-2), task, seed=0)
    assert result.status == objective.REACHED, result.message
    assert result.best_metric >= task.target and result.tta_seconds is not None
    assert isinstance(configure(Recipe(), _model(), device="cpu"), Configured)
    assert autotune.fit is fit


def test_checkpointing_recipe_checkpoints_the_users_model():
    from autotune.tasks import load_task

    model = load_task("bert").build_model()
    done = configure(Recipe(checkpointing=True), model, device="cpu")
    assert done.model.is_gradient_checkpointing  # transformers' own switch, turned on
