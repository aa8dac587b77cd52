"""Every knob really acts: each test applies one knob to a tiny model and checks its effect."""

import pytest
import torch
from torch import nn

from autotune.recipe import Recipe
from autotune.train import (
    autocast_context,
    build_optimizer,
    build_scheduler,
    lr_factor,
    make_grad_scaler,
    optimizer_step,
    prune_by_magnitude,
    sparsity,
)
from autotune.train.knobs import prunable_weights
from tests.toy_task import make_toy_task


def test_bf16_really_computes_in_bf16():
    layer = nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with autocast_context("bf16", "cpu"):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32  # master weights stay fp32
    with autocast_context("fp32", "cpu"):
        assert layer(x).dtype == torch.float32


def test_fp16_autocast_and_loss_scaler():
    with autocast_context("fp16", "cpu"):
        assert nn.Linear(8, 8)(torch.randn(2, 8)).dtype == torch.float16
    assert make_grad_scaler("fp16", "cpu") is not None
    assert make_grad_scaler("bf16", "cpu") is None
    assert make_grad_scaler("fp32", "cpu") is None


def test_bf16_training_step_differs_from_fp32_but_is_close():
    task = make_toy_task()
    batch = [t[:32] for t in task.train]
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = task.build_model()
        recipe = Recipe(precision=precision, optimizer="sgd", lr=0.1, momentum=0.0,
                        weight_decay=0.0)
        opt = build_optimizer(model.parameters(), recipe)
        optimizer_step(model, task, [batch], opt, None, recipe, "cpu")
        results[precision] = torch.cat([p.detach().flatten() for p in model.parameters()])
    diff = (results["fp32"] - results["bf16"]).abs().max().item()
    assert 0 < diff < 1e-2  # bf16 rounding changes the step, slightly


def test_accumulation_of_4x8_equals_one_batch_of_32():
    task = make_toy_task()
    batch = [t[:32] for t in task.train]
    micro = [[t[i * 8:(i + 1) * 8] for t in batch] for i in range(4)]
    params = {}
    for name, batches, accum in (("one", [batch], 1), ("accum", micro, 4)):
        torch.manual_seed(0)
        model = task.build_model()
        recipe = Recipe(batch_size=32 // accum, accumulation_steps=accum, optimizer="adamw",
                        lr=1e-2)
        opt = build_optimizer(model.parameters(), recipe)
        optimizer_step(model, task, batches, opt, None, recipe, "cpu")
        params[name] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(params["one"], params["accum"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_prune_ratio_zeroes_that_fraction_and_keeps_it_through_training():
    torch.manual_seed(0)
    task = make_toy_task()
    model = task.build_model()
    masks = prune_by_magnitude(model, 0.3)
    weights = prunable_weights(model)
    assert sparsity(weights) == pytest.approx(0.3, abs=0.005)
    for w in weights:  # each weight matrix, not just the total
        assert float((w == 0).float().mean()) == pytest.approx(0.3, abs=0.01)
    recipe = Recipe(optimizer="adamw", lr=1e-2)
    opt = build_optimizer(model.parameters(), recipe)
    for i in range(5):
        optimizer_step(model, task, [[t[i * 16:(i + 1) * 16] for t in task.train]], opt, None,
                       recipe, "cpu", masks=masks)
    assert sparsity(weights) == pytest.approx(0.3, abs=0.005)


def test_pruning_removes_the_smallest_magnitudes():
    layer = nn.Linear(10, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1, 11, dtype=torch.float32).view(1, 10))
    prune_by_magnitude(nn.Sequential(layer), 0.3)
    assert layer.weight.flatten().tolist()[:3] == [0, 0, 0]
    assert layer.weight.flatten().tolist()[3:] == list(range(4, 11))


def test_no_pruning_at_ratio_zero():
    assert prune_by_magnitude(nn.Linear(4, 4), 0.0) == {}


def test_warmup_values_follow_the_schedule():
    recipe = Recipe(lr=0.1, warmup_steps=4, schedule="linear", decay_steps=14)
    model = nn.Linear(2, 2)
    opt = build_optimizer(model.parameters(), recipe)
    sched = build_scheduler(opt, recipe)
    seen = []
    for _ in range(16):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected_warmup = [0.1 * (s + 1) / 4 for s in range(4)]
    assert seen[:4] == pytest.approx(expected_warmup)
    assert seen[4] == pytest.approx(0.1)  # peak right after warmup
    # linear decay from 1.0 to 0.1 of the peak between step 4 and step 14
    assert seen[9] == pytest.approx(0.1 * (0.1 + 0.9 * (1 - 5 / 10)))
    assert seen[14] == pytest.approx(0.01) and seen[15] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(seen[4:], seen[5:]))


def test_constant_and_cosine_schedules():
    constant = Recipe(warmup_steps=0)
    assert [lr_factor(s, constant) for s in (0, 10, 10_000)] == [1.0, 1.0, 1.0]
    cosine = Recipe(warmup_steps=0, schedule="cosine", decay_steps=100)
    assert lr_factor(0, cosine) == pytest.approx(1.0)
    assert lr_factor(50, cosine) == pytest.approx(0.55)
    assert lr_factor(100, cosine) == pytest.approx(0.1)


@pytest.mark.parametrize(("name", "cls"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                           ("adamw", torch.optim.AdamW)])
def test_optimizer_choice(name, cls):
    recipe = Recipe(optimizer=name, lr=0.05, momentum=0.8)
    opt = build_optimizer(nn.Linear(2, 2).parameters(), recipe)
    assert type(opt) is cls
    assert opt.param_groups[0]["lr"] == 0.05
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.8
