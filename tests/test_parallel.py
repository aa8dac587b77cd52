"""Contract test for every parallel mode: one optimizer step with 2 workers (gloo, CPU) equals
the single-process step on the concatenated batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from autotune.recipe import Recipe
from autotune.train.loop import optimizer_step
from autotune.train.parallel import MODES, unsupported_reason
from tests import parallel_worker as w

WORKERS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_step(recipe: Recipe) -> dict[str, torch.Tensor]:
    """The single-process step: each accumulation step's micro-batch is the workers' together."""
    model = w.initial_model()
    from autotune.train import knobs

    masks = knobs.prune_by_magnitude(model, recipe.prune_ratio)
    opt = knobs.build_optimizer(model.parameters(), recipe)
    x, y = w.data(WORKERS, recipe.accumulation_steps)
    size = w.BATCH * WORKERS
    micro = [[x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]]
             for i in range(recipe.accumulation_steps)]
    optimizer_step(model, w.task(), micro, opt, knobs.build_scheduler(opt, recipe), recipe,
                   "cpu", masks=masks)
    return {n: p.detach().float() for n, p in model.named_parameters()}


PARALLEL = [m for m in MODES if m != "single"]
CASES = [
    *[(mode, {}) for mode in PARALLEL],
    ("ddp", {"accumulation_steps": 2, "prune_ratio": 0.3}),
    ("fsdp", {"accumulation_steps": 2, "prune_ratio": 0.3}),
    ("zero2", {"accumulation_steps": 2, "optimizer": "sgd", "lr": 0.1}),
    ("zero1", {"precision": "bf16"}),
    ("ddp", {"precision": "bf16"}),
    pytest.param("zero2", {"offload": True}, marks=pytest.mark.slow),  # compiles CPU Adam
    pytest.param("zero3", {"offload": True}, marks=pytest.mark.slow),
    ("zero2", {"precision": "fp16"}),  # refused on the CPU: skipped with the reason
]


def _id(case) -> str:
    mode, changes = case.values if hasattr(case, "values") else case
    return f"{mode}-{'-'.join(f'{k}={v}' for k, v in changes.items()) or 'plain'}"


@pytest.mark.distributed
@pytest.mark.parametrize(("mode", "changes"), CASES, ids=[_id(c) for c in CASES])
def test_one_step_matches_the_single_process_step(mode, changes, tmp_path):
    recipe = Recipe.from_dict({"parallelism": mode, "workers": WORKERS, "batch_size": w.BATCH,
                               "lr": 1e-2, **changes})
    reason = unsupported_reason(recipe, "cpu")
    if reason:
        pytest.skip(reason)
    out = tmp_path / "state.pt"
    mp.spawn(w.step_in_mode, args=(WORKERS, free_port(), recipe.to_dict(), str(out)),
             nprocs=WORKERS, join=True)
    got = torch.load(out)
    single = recipe.replace(parallelism="single", workers=1, offload=False,
                            batch_size=w.BATCH * WORKERS)
    expected = reference_step(single)
    before = {n: p.detach() for n, p in w.initial_model().named_parameters()}
    assert got.keys() == expected.keys()
    # bf16: DeepSpeed keeps bf16 weights where autocast keeps fp32 ones; both round to bf16's
    # 8 bits of mantissa, so they agree to ~1e-2. fp32 agrees to reduction-order noise.
    tol = {"rtol": 2e-2, "atol": 1e-2} if recipe.precision == "bf16" else {"rtol": 1e-4,
                                                                              "atol": 1e-5}
    for name in expected:
        assert not torch.equal(expected[name], before[name]), f"{name} did not move"
        torch.testing.assert_close(got[name], expected[name], **tol,
                                   msg=f"{mode}: parameter {name} differs")


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


def test_fp16_zero_on_cpu_is_infeasible_before_it_runs():
    from autotune import objective
    from autotune.train import TrialLimits, run_trial
    from tests.toy_task import make_toy_task

    task = make_toy_task()
    recipe = Recipe(parallelism="zero2", workers=1, precision="fp16")
    result = run_trial(task, recipe, TrialLimits.for_task(task))
    assert result.status == objective.INFEASIBLE and "fp16" in result.message
    assert result.steps == 0
