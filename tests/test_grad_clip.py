"""``grad_clip`` really clips: once per optimizer step, on the gradient the update uses (summed
over the micro-batches, unscaled from fp16), to the global norm. Every test uses plain SGD
(no momentum, no weight decay): the update is ``lr x gradient``, so it shows the gradient's
scale, which one Adam step (about ``lr x sign(g)``) would hide. Each parallel mode's clipped
step is checked against the single-process one by the contract in tests/test_parallel.py."""

from __future__ import annotations

import pytest
import torch

from autotune.knobs import build_optimizer, clip_gradients, optimizer_step
from autotune.memory import trace_step
from autotune.recipe import Recipe
from tests.toy_task import make_toy_task

LR = 0.5


def _recipe(**changes) -> Recipe:
    return Recipe(optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0, **changes)


def _global_norm(tensors) -> float:
    return float(torch.linalg.vector_norm(torch.stack([t.norm() for t in tensors])))


def _start():
    """The toy task, its model as seeded, a batch of 32, and that batch's fp32 gradient."""
    task = make_toy_task()
    batch = [t[:32] for t in task.train]
    torch.manual_seed(0)
    model = task.build_model()
    task.loss(model, batch).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return task, model, batch, grads


def test_clip_gradients_scales_the_global_norm_down_to_max_norm():
    _, model, _, grads = _start()
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    norm = _global_norm(grads)
    pre = clip_gradients(model.parameters(), norm / 4)
    assert isinstance(pre, torch.Tensor)  # not read on the host: no sync per step on a GPU
    assert float(pre) == pytest.approx(norm, rel=1e-6)
    assert _global_norm([p.grad for p in model.parameters()]) == pytest.approx(norm / 4, rel=1e-5)
    for p, g in zip(model.parameters(), grads):  # every gradient by the same factor
        torch.testing.assert_close(p.grad, g / 4, rtol=1e-5, atol=1e-8)


def test_a_gradient_below_max_norm_is_left_as_it_is():
    _, model, _, grads = _start()
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    clip_gradients(model.parameters(), 2 * _global_norm(grads))
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=0)


@pytest.mark.parametrize("fraction", [0.25, 0.0])
def test_the_step_applies_the_hand_computed_clipped_update(fraction):
    """``grad_clip`` a quarter of the norm: the update is ``lr x g x clip / norm``; 0 does not
    clip (the update is ``lr x g``) and tells no norm."""
    task, model, batch, grads = _start()
    norm = _global_norm(grads)
    clip = fraction * norm
    before = [p.detach().clone() for p in model.parameters()]
    recipe = _recipe(grad_clip=clip)
    told: list[torch.Tensor] = []
    optimizer_step(model, task.loss, [batch], build_optimizer(model.parameters(), recipe), None,
                   recipe, "cpu", grad_norm=told.append)
    factor = clip / norm if clip else 1.0
    for b, p, g in zip(before, model.parameters(), grads):
        assert (p.detach() - b).abs().max() > 1e-4  # it moved
        torch.testing.assert_close(p.detach(), b - LR * g * factor, rtol=1e-5, atol=1e-7)
    if clip:
        assert len(told) == 1 and float(told[0]) == pytest.approx(norm, rel=1e-5)
    else:
        assert told == []


def _accumulated_step(task, micro, accum: int, clip: float):
    torch.manual_seed(0)
    model = task.build_model()
    recipe = _recipe(batch_size=32 // accum, accumulation_steps=accum, grad_clip=clip)
    told: list[torch.Tensor] = []
    optimizer_step(model, task.loss, micro, build_optimizer(model.parameters(), recipe), None,
                   recipe, "cpu", grad_norm=told.append)
    return [p.detach().clone() for p in model.parameters()], float(told[0])


def test_accumulation_of_4x8_with_clipping_equals_one_batch_of_32():
    """Clipped once, on the summed gradient: clipping each micro-batch's gradient (or their
    sum before it is divided by the count) would give another update."""
    task, model, batch, grads = _start()
    norm = _global_norm(grads)
    clip = norm / 3
    micro = [[t[i * 8:(i + 1) * 8] for t in batch] for i in range(4)]
    before = [p.detach().clone() for p in model.parameters()]
    (one, one_norm), (acc, acc_norm) = (_accumulated_step(task, [batch], 1, clip),
                                        _accumulated_step(task, micro, 4, clip))
    assert one_norm == pytest.approx(norm, rel=1e-5) and acc_norm == pytest.approx(norm, rel=1e-4)
    for b, a, c in zip(before, one, acc):
        assert (a - b).abs().max() > 1e-4
        torch.testing.assert_close(c - b, a - b, rtol=1e-4, atol=1e-7)


def test_fp16_clips_the_unscaled_gradient():
    """Under fp16 the backward pass produces gradients times the loss scale (1024 here); they
    are clipped after ``unscale_``, so the update is the fp32 clipped one up to fp16 rounding.
    Clipping the scaled gradient would shrink the update by the scale (1024x)."""
    task, model, batch, grads = _start()
    norm = _global_norm(grads)
    clip = norm / 4
    before = [p.detach().clone() for p in model.parameters()]
    recipe = _recipe(precision="fp16", grad_clip=clip)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    told: list[torch.Tensor] = []
    optimizer_step(model, task.loss, [batch], build_optimizer(model.parameters(), recipe), None,
                   recipe, "cpu", scaler=scaler, grad_norm=told.append)
    assert scaler.get_scale() == 2.0**10  # no inf/NaN: the step was taken, not skipped
    assert float(told[0]) == pytest.approx(norm, rel=2e-2)  # the unscaled norm
    for b, p, g in zip(before, model.parameters(), grads):
        expected = -LR * g * clip / norm
        moved = p.detach() - b
        assert (moved - expected).norm() < 2e-2 * expected.norm()


def test_the_memory_trace_runs_the_clipped_step_on_fake_tensors():
    """The memory gate traces the same step; clipping needs no tensor values, so the trace
    stays on fake tensors (nothing allocated, no value read)."""
    trace = trace_step(make_toy_task(), _recipe(grad_clip=1.0, batch_size=16))
    assert trace.method == "fake_trace", trace.notes
