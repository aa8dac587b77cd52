"""Every knob really acts: each test applies one knob to a tiny model and checks its effect."""

import pytest
import torch
from torch import nn

from autotune.knobs import (
    Diverged,
    autocast_context,
    build_optimizer,
    build_scheduler,
    lr_factor,
    make_grad_scaler,
    optimizer_step,
    prunable_weights,
    prune_by_magnitude,
    sparsity,
)
from autotune.recipe import Recipe
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
        optimizer_step(model, task.loss, [batch], opt, None, recipe, "cpu")
        results[precision] = torch.cat([p.detach().flatten() for p in model.parameters()])
    diff = (results["fp32"] - results["bf16"]).abs().max().item()
    assert 0 < diff < 1e-2  # bf16 rounding changes the step, slightly


def _sgd_step(task, micro, accum: int) -> list[torch.Tensor]:
    """Parameters after one plain-SGD step (no momentum: the update is ``lr * gradient``, so it
    shows the gradient's scale, which one Adam step, about ``lr * sign(g)``, would hide)."""
    torch.manual_seed(0)
    model = task.build_model()
    recipe = Recipe(batch_size=32 // accum, accumulation_steps=accum, optimizer="sgd", lr=0.5,
                    momentum=0.0, weight_decay=0.0)
    opt = build_optimizer(model.parameters(), recipe)
    optimizer_step(model, task.loss, micro, opt, None, recipe, "cpu")
    return [p.detach().clone() for p in model.parameters()]


def test_accumulation_of_4x8_equals_one_batch_of_32():
    task = make_toy_task()
    batch = [t[:32] for t in task.train]
    micro = [[t[i * 8:(i + 1) * 8] for t in batch] for i in range(4)]
    torch.manual_seed(0)
    before = [p.detach().clone() for p in task.build_model().parameters()]
    one, accum = _sgd_step(task, [batch], 1), _sgd_step(task, micro, 4)
    for b, a, c in zip(before, one, accum):
        assert (a - b).abs().max() > 1e-3  # the step moved every parameter visibly
        # Same update, not merely the same direction: a sum of the 4 micro-batches' gradients
        # (no division by their count) would move 4x as far.
        torch.testing.assert_close(c - b, a - b, rtol=1e-4, atol=1e-6)


def test_a_nan_loss_raises_diverged_before_its_backward_pass():
    task = make_toy_task()
    model = task.build_model()
    recipe = Recipe(optimizer="sgd", lr=0.1, momentum=0.0)
    opt = build_optimizer(model.parameters(), recipe)
    with pytest.raises(Diverged, match="nan"):
        optimizer_step(model, lambda m, b: task.loss(m, b) * torch.nan,
                       [[t[:8] for t in task.train]], opt, None, recipe, "cpu")
    assert all(p.grad is None for p in model.parameters())


def test_weight_sparsity_zeroes_that_fraction_and_keeps_it_through_training():
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
        optimizer_step(model, task.loss, [[t[i * 16:(i + 1) * 16] for t in task.train]], opt, None,
                       recipe, "cpu", masks=masks)
    assert sparsity(weights) == pytest.approx(0.3, abs=0.005)


def test_weight_sparsity_zeroes_the_smallest_magnitudes():
    layer = nn.Linear(10, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1, 11, dtype=torch.float32).view(1, 10))
    prune_by_magnitude(nn.Sequential(layer), 0.3)
    assert layer.weight.flatten().tolist()[:3] == [0, 0, 0]
    assert layer.weight.flatten().tolist()[3:] == list(range(4, 11))


def test_no_weight_sparsity_masks_at_zero():
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
