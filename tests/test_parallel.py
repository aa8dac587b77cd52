"""Contract test for every parallel mode: one optimizer step with 2 workers (gloo, CPU) equals
the single-process step on the concatenated batch."""

from __future__ import annotations

import dataclasses
import socket

import pytest
import torch
import torch.multiprocessing as mp

from autotune.knobs import (
    MODES,
    apply_structured_pruning,
    build_optimizer,
    build_scheduler,
    load_teacher,
    optimizer_step,
    prune_by_magnitude,
    step_loss,
    unsupported_reason,
    weight_bytes,
)
from autotune.recipe import Recipe
from tests import parallel_worker as w

WORKERS = 2
LR = 2.0
"""Plain SGD (no momentum) at this rate: the step is ``lr * mean gradient``, so a mode that
summed the workers' gradients instead of averaging them would move the weights twice as far
(one Adam step, about ``lr * sign(g)``, could not tell). At 2.0 the step is 15-30x bf16's
rounding of the weights, so even bf16 can be held to a tolerance well below the step."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def initial_pruned(recipe: Recipe) -> torch.nn.Module:
    """The contract model as ``prepare`` leaves it before the parallel mode: structured
    pruning (``prune_ratio`` at step 0) applied."""
    model = w.initial_model()
    apply_structured_pruning(model, recipe)
    return model


def reference_step(recipe: Recipe) -> tuple[dict[str, torch.Tensor], float | None]:
    """The single-process step: each accumulation step's micro-batch is the workers' together.
    Returns the parameters after it and, with ``grad_clip``, the gradient norm it clipped."""
    model = initial_pruned(recipe)
    masks = prune_by_magnitude(model, recipe.weight_sparsity)
    opt = build_optimizer(model.parameters(), recipe)
    x, y = w.data(WORKERS, recipe.accumulation_steps)
    size = w.BATCH * WORKERS
    micro = [[x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]]
             for i in range(recipe.accumulation_steps)]
    norms: list[torch.Tensor] = []
    loss = step_loss(w.task(), load_teacher(w.task(), recipe), recipe)
    optimizer_step(model, loss, micro, opt, build_scheduler(opt, recipe), recipe,
                   "cpu", masks=masks, grad_norm=norms.append)
    state = {n: p.detach().float() for n, p in model.named_parameters()}
    return state, float(norms[0]) if norms else None


CLIP = 0.15
"""``grad_clip`` of the clipping cases: below the contract step's gradient norm (0.46 for one
micro-batch, 0.27 for two, measured), so the clipped step is 0.33 / 0.55 of the unclipped one,
and a mode that did not clip, or clipped a worker's own norm instead of the global one, would
be off by far more than the tolerance. The test checks that the reference did clip."""


PARALLEL = [m for m in MODES if m not in ("single", "pipeline")]  # pipeline: test_pipeline.py
CASES = [
    *[(mode, {}) for mode in PARALLEL],
    # prune_ratio: every worker prunes the same seeded weights before the mode wraps them
    # (the parameters' shapes are checked: a mode that kept the dense model fails); the
    # weight_sparsity masks are re-applied after the mode's step (DDP; FSDP2: by shard).
    ("ddp", {"accumulation_steps": 2, "prune_ratio": 0.3}),
    ("fsdp", {"accumulation_steps": 2, "prune_ratio": 0.3}),
    ("zero3", {"prune_ratio": 0.3}),
    ("ddp", {"accumulation_steps": 2, "weight_sparsity": 0.3}),
    ("fsdp", {"weight_sparsity": 0.3}),
    ("zero2", {"accumulation_steps": 2}),
    ("zero1", {"precision": "bf16"}),
    ("ddp", {"precision": "bf16"}),
    ("zero2", {"offload": True}),  # torch SGD on DeepSpeed's CPU copy of the weights
    ("zero3", {"offload": True}),
    # DeepSpeedCPUAdam (compiled on first use). One Adam step is about lr * sign(g), so this
    # case checks the optimizer's wiring, not the gradient's scale: zero2-offload=True does.
    pytest.param("zero2", {"offload": True, "optimizer": "adamw", "lr": 1e-2},
                 marks=pytest.mark.slow),
    ("zero2", {"precision": "fp16"}),  # refused on the CPU: skipped with the reason
    # distill_weight: each worker's loss mixes in the KL to its own frozen copy of the teacher
    # (never wrapped, sharded or partitioned); the gradient is still averaged once.
    ("ddp", {"distill_weight": 0.5, "accumulation_steps": 2}),
    pytest.param("fsdp", {"distill_weight": 0.5}, marks=pytest.mark.slow),  # ddp case: same path
    ("zero2", {"distill_weight": 0.5, "distill_temperature": 4.0}),
    # grad_clip: after DDP's all-reduce; over FSDP2's shards; DeepSpeed's gradient_clipping.
    ("ddp", {"grad_clip": CLIP, "accumulation_steps": 2}),
    ("fsdp", {"grad_clip": CLIP, "accumulation_steps": 2}),
    ("zero2", {"grad_clip": CLIP, "accumulation_steps": 2}),
    ("zero3", {"grad_clip": CLIP}),
    pytest.param("zero1", {"grad_clip": CLIP}, marks=pytest.mark.slow),
    # bf16 weights round the step by about 5% (see below); a clip of 0.76 keeps it that large.
    pytest.param("zero1", {"grad_clip": 0.35, "precision": "bf16"}, marks=pytest.mark.slow),
    pytest.param("ddp", {"grad_clip": CLIP, "prune_ratio": 0.3}, marks=pytest.mark.slow),
    # fused_optimizer: torch's fused AdamW on FSDP2's DTensor shards (fused SGD has no DTensor
    # version: skipped as infeasible), fused SGD on DeepSpeed's flat partitions, foreach
    # under DDP. Adam's first step is about lr * sign(g): these check the wiring.
    ("fsdp", {"fused_optimizer": "fused", "optimizer": "adamw", "lr": 1e-2}),
    ("fsdp", {"fused_optimizer": "fused"}),
    pytest.param("zero2", {"fused_optimizer": "fused"}, marks=pytest.mark.slow),
    pytest.param("ddp", {"fused_optimizer": "foreach"}, marks=pytest.mark.slow),
]


def _id(case) -> str:
    mode, changes = case.values if hasattr(case, "values") else case
    return f"{mode}-{'-'.join(f'{k}={v}' for k, v in changes.items()) or 'plain'}"


def movement_error(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                   before: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per parameter: |got's step - expected step| / |expected step| (norms)."""
    return {name: float((got[name] - expected[name]).norm()
                        / (expected[name] - before[name]).norm()) for name in expected}


@pytest.mark.distributed
@pytest.mark.parametrize(("mode", "changes"), CASES, ids=[_id(c) for c in CASES])
def test_one_step_matches_the_single_process_step(mode, changes, tmp_path):
    recipe = Recipe.from_dict({"parallelism": mode, "workers": WORKERS, "batch_size": w.BATCH,
                               "optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
                               "lr": LR, **changes})
    reason = unsupported_reason(recipe, "cpu")
    if reason:
        pytest.skip(reason)
    out = tmp_path / "state.pt"
    mp.spawn(w.step_in_mode, args=(WORKERS, free_port(), recipe.to_dict(), str(out)),
             nprocs=WORKERS, join=True)
    saved = torch.load(out)
    got = saved["params"]
    single = recipe.replace(parallelism="single", workers=1, offload=False,
                            batch_size=w.BATCH * WORKERS)
    expected, norm = reference_step(single)
    if recipe.grad_clip > 0:
        # The reference clipped (by at least 20%), and the mode clipped by the same global
        # norm: the whole batch's gradient, not one worker's half.
        assert norm is not None and norm > 1.25 * recipe.grad_clip, norm
        assert saved["grad_norm"] == pytest.approx(norm, rel=1e-2 if recipe.precision != "fp32"
                                                   else 1e-4)
    before = {n: p.detach() for n, p in initial_pruned(recipe).named_parameters()}
    assert got.keys() == expected.keys()
    assert {n: t.shape for n, t in got.items()} == {n: t.shape for n, t in expected.items()}
    for name in expected:
        step = (expected[name] - before[name]).abs().max()
        assert step > 1e-3, f"the reference step did not move {name}"
        # The result itself moved by about as much (not merely: it differs from the start).
        assert (got[name] - before[name]).abs().max() > 0.5 * step, f"{mode}: {name} stayed"
    # DeepSpeed's bf16 keeps bf16 weights where autocast keeps fp32 ones: its result is rounded
    # to bf16's 8 bits of mantissa, about 5% of this step (measured). bf16 autocast with fp32
    # weights differs by 0.3%, fp32 by reduction-order noise (1e-7). Summed gradients: 100%.
    if weight_bytes(recipe) == 2:
        tol = 0.1
    else:
        tol = 1e-2 if recipe.precision == "bf16" else 1e-4
    errors = movement_error(got, expected, before)
    assert max(errors.values()) < tol, f"{mode}: the step differs from the reference's " \
        f"by this fraction of the step, per parameter: {errors}"


@pytest.mark.distributed
def test_a_worker_that_dies_fails_only_its_trial_with_the_reason():
    from autotune import objective
    from autotune.tasks import load_task
    from autotune.train import TrialLimits, run_trial

    task = load_task("tests.toy_task:make_crashing_task")
    recipe = Recipe(parallelism="ddp", workers=2, lr=1e-2)
    result = run_trial(task, recipe, TrialLimits.for_task(task))
    assert result.status == objective.ERROR
    assert "worker 1 exited with signal 9" in result.message


@pytest.mark.distributed
def test_workers_whose_evaluations_take_different_times_agree_on_the_next_one():
    """Evaluations are spaced by their cost (``autotune.train.evaluation.paced_point``); a
    worker that spaced them by its own slower evaluation would skip a point the others make,
    and the two would meet in different collectives (gloo aborts the process)."""
    from autotune import objective
    from autotune.tasks import load_task
    from autotune.train import TrialLimits, run_trial

    task = load_task("tests.toy_task:make_uneven_eval_task")
    recipe = Recipe(parallelism="ddp", workers=2, lr=1e-2)
    limits = dataclasses.replace(TrialLimits.for_task(task), max_train_seconds=1.5)
    result = run_trial(task, recipe, limits)
    assert result.status == objective.NOT_REACHED, result.message
    assert len(result.curve) >= 2


def test_fp16_zero_on_cpu_is_infeasible_before_it_runs():
    from autotune import objective
    from autotune.train import TrialLimits, run_trial
    from tests.toy_task import make_toy_task

    task = make_toy_task()
    recipe = Recipe(parallelism="zero2", workers=1, precision="fp16")
    result = run_trial(task, recipe, TrialLimits.for_task(task))
    assert result.status == objective.INFEASIBLE and "fp16" in result.message
    assert result.steps == 0
