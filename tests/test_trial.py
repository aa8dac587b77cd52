"""The trial loop: the time-to-target clock, and failures recorded instead of raised."""

import dataclasses
import math
import time

import pytest
import torch
from torch import nn

from autotune import objective
from autotune.recipe import Recipe
from autotune.train import TrialLimits, TrialResult, check_launch, result_from_final, run_trial
from autotune.train.evaluation import MAX_EVAL_SHARE


def limits(task, **kw):
    base = TrialLimits.for_task(task, seed=0)
    return dataclasses.replace(base, **kw)


def test_reaches_target_and_tta_is_the_first_evaluation_at_target(toy_task):
    reports = []
    result = run_trial(toy_task, Recipe(lr=1e-2), limits(toy_task), report=reports.append)
    assert result.status == objective.REACHED
    assert result.tta_seconds is not None and result.tta_seconds > 0
    assert result.score == result.tta_seconds
    times = [t for t, _ in result.curve]
    metrics = [m for _, m in result.curve]
    assert metrics[-1] >= toy_task.target and all(m < toy_task.target for m in metrics[:-1])
    assert result.tta_seconds == pytest.approx(times[-1], abs=1e-3)
    assert reports[-1]["final"] is True and reports[-1]["status"] == objective.REACHED
    assert all(r["final"] is False for r in reports[:-1])


def test_evaluation_time_is_not_counted(toy_task):
    slow_predict_calls = []

    def slow_predict(model, batch):
        time.sleep(0.2)
        slow_predict_calls.append(1)
        return toy_task.predict(model, batch)

    task = dataclasses.replace(toy_task, predict=slow_predict, target=1.01,
                               eval_every_seconds=0.1)
    start = time.perf_counter()
    result = run_trial(task, Recipe(lr=1e-2), limits(task, max_train_seconds=0.5))
    wall = time.perf_counter() - start
    assert result.status == objective.NOT_REACHED and result.tta_seconds is None
    assert result.eval_points_full >= 2 and len(slow_predict_calls) >= 2
    assert result.eval_seconds >= 0.2 * result.eval_points_full
    # The training clock stops at its limit; the evaluations' time is not on it.
    assert 0.5 <= result.train_seconds < 0.5 + 0.2
    assert wall >= result.train_seconds + result.eval_seconds * 0.9
    assert result.score > 2 * 0.5  # a trial with no TTA scores worse than any TTA


def test_costly_evaluations_are_spaced_to_a_quarter_of_training(toy_task):
    """An evaluation of 0.05 s every 0.02 s of training would take 2.5x the training; the
    schedule holds the trial's evaluations to a quarter of its training instead
    (MAX_EVAL_SHARE): the k+1-th point waits until k x 0.05 s is a quarter of the training."""
    calls = []

    def slow_predict(model, batch):
        time.sleep(0.05)
        calls.append(1)
        return toy_task.predict(model, batch)

    task = dataclasses.replace(toy_task, predict=slow_predict, target=1.01,
                               eval_every_seconds=0.02)
    result = run_trial(task, Recipe(lr=1e-2), limits(task, max_train_seconds=1.0))
    times = [t for t, _ in result.curve][:-1]  # the last point is the limit's
    assert len(times) >= 3
    assert all(t >= k * 0.05 / MAX_EVAL_SHARE for k, t in enumerate(times)), times
    # The first point cannot know the cost yet, and the last is the limit's.
    assert result.eval_seconds <= MAX_EVAL_SHARE * result.train_seconds + 2 * 0.06


def test_same_seed_same_curve(toy_task):
    lim = limits(toy_task, max_steps=3, target=1.1)
    a = run_trial(toy_task, Recipe(lr=1e-3), lim)
    b = run_trial(toy_task, Recipe(lr=1e-3), lim)
    # Evaluations fall at training-time points, which vary; the step-3 state does not.
    assert a.last_metric == b.last_metric
    assert a.steps == b.steps == 3


class _OOMAfter(nn.Module):
    """Fakes the hardware, not the logic: raises the real CUDA OOM error after some calls."""

    def __init__(self, inner: nn.Module, calls: int) -> None:
        super().__init__()
        self.inner, self.calls = inner, calls

    def forward(self, x):
        self.calls -= 1
        if self.calls < 0:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total)")
        return self.inner(x)


def test_out_of_memory_is_recorded_as_infeasible(toy_task):
    # Unreachable target: the fake OOM must fire, however fast the first steps are.
    task = dataclasses.replace(toy_task, build_model=lambda: _OOMAfter(toy_task.build_model(), 3),
                               target=1.01)
    result = run_trial(task, Recipe(lr=1e-2), limits(task))
    assert result.status == objective.INFEASIBLE
    assert "out of memory" in result.message
    assert result.score == objective.score(objective.INFEASIBLE, None, None, 1.01, 5.0)
    assert result.peak_memory_bytes and result.peak_memory_bytes > 0


def test_nan_loss_is_recorded_as_diverged(toy_task):
    def nan_loss(model, batch):
        return toy_task.loss(model, batch) * float("nan")

    task = dataclasses.replace(toy_task, loss=nan_loss)
    result = run_trial(task, Recipe(lr=1e-2), limits(task))
    assert result.status == objective.DIVERGED
    assert "nan" in result.message.lower()


def test_huge_learning_rate_diverges_for_real(toy_task):
    task = dataclasses.replace(toy_task, target=1.01)
    result = run_trial(task, Recipe(optimizer="sgd", lr=1e20, momentum=0.9),
                       limits(task, max_train_seconds=2.0))
    assert result.status == objective.DIVERGED


def test_over_budget_is_infeasible(toy_task):
    result = run_trial(toy_task, Recipe(lr=1e-2), limits(toy_task, budget_bytes=1000))
    assert result.status == objective.INFEASIBLE
    assert "exceeds the budget" in result.message
    assert result.tta_seconds is None


def test_other_errors_are_recorded_not_raised(toy_task):
    def broken(model, batch):
        raise ValueError("shape mismatch in user loss")

    result = run_trial(dataclasses.replace(toy_task, loss=broken), Recipe(), limits(toy_task))
    assert result.status == objective.ERROR
    assert "shape mismatch" in result.message


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trials_reach_the_target(toy_task, precision):
    result = run_trial(toy_task, Recipe(precision=precision, lr=1e-2), limits(toy_task))
    assert result.status == objective.REACHED


def test_every_knob_at_once(toy_task):
    recipe = Recipe(precision="bf16", batch_size=16, accumulation_steps=2, prune_ratio=0.3,
                    warmup_steps=5, schedule="cosine", decay_steps=50, optimizer="sgd", lr=0.1)
    result = run_trial(toy_task, recipe, limits(toy_task))
    assert result.status == objective.REACHED
    assert result.examples == result.steps * 32


def test_scores_order_outcomes():
    reached = objective.score(objective.REACHED, 50.0, 0.9, 0.9, 60)
    close = objective.score(objective.NOT_REACHED, None, 0.85, 0.9, 60)
    far = objective.score(objective.STOPPED, None, 0.5, 0.9, 60)
    failed = objective.score(objective.DIVERGED, None, None, 0.9, 60)
    assert reached < close < far < failed


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_trial_on_each_device(toy_task, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    result = run_trial(toy_task, Recipe(precision="bf16", lr=1e-2), limits(toy_task),
                       device=device)
    assert result.status == objective.REACHED
    assert result.device.startswith(device)
    expected_source = "cuda_allocated" if device == "cuda" else "cpu_tracked"
    assert result.peak_memory_source == expected_source and result.peak_memory_bytes > 0


def test_a_failed_result_scores_as_failed_and_says_why(toy_task):
    lim = limits(toy_task)
    failed = TrialResult.failed(objective.ERROR, "worker 1 died", lim, "cuda")
    assert (failed.status, failed.message, failed.device) == (objective.ERROR, "worker 1 died",
                                                              "cuda")
    assert failed.score == 4 * lim.max_train_seconds  # worse than any trial that trained
    # A multi-worker trial that cannot start: a task that worker processes cannot rebuild.
    refused = check_launch(toy_task, Recipe(parallelism="ddp", workers=2), lim, "cpu", None)
    assert refused.status == objective.ERROR and "load_task" in refused.message
    assert refused.score == failed.score
    gpus = check_launch(dataclasses.replace(toy_task, load_spec=("toy", {})),
                        Recipe(parallelism="ddp", workers=4), lim, "cuda", 2)
    assert gpus.status == objective.INFEASIBLE and "4 GPUs; 2 visible" in gpus.message
    # Workers that ended without worker 0's final report.
    lost = result_from_final(None, "worker 1 exited with signal 9", "cpu", lim)
    assert lost.status == objective.ERROR and lost.message == "worker 1 exited with signal 9"


def _count_tensor_reads(monkeypatch) -> list[str]:
    """Count every read of a tensor's value on the host (``float``, ``item``, ``bool``,
    ``tolist``): on a GPU each one waits for the device."""
    reads: list[str] = []
    for name in ("__float__", "item", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_the_loop_reads_no_tensor_per_step(toy_task, monkeypatch):
    """The loss, the finite check and the clock are read at evaluation points only: a trial of
    40 steps reads no more tensor values than one of 5 (SGD: its update reads nothing)."""
    reads = _count_tensor_reads(monkeypatch)
    counts = []
    for steps in (5, 40):
        reads.clear()
        lim = limits(toy_task, max_steps=steps, eval_every_seconds=1e9, max_train_seconds=1e9,
                     target=1.1)
        result = run_trial(toy_task, Recipe(optimizer="sgd", lr=1e-2), lim)
        assert result.status == objective.NOT_REACHED and result.steps == steps
        counts.append(len(reads))
    assert counts[0] == counts[1], counts


def test_a_nan_midway_is_caught_within_one_evaluation_interval(toy_task):
    calls = []

    def nan_from_step_300(model, batch):
        calls.append(1)
        loss = toy_task.loss(model, batch)
        return loss * float("nan") if len(calls) > 300 else loss

    task = dataclasses.replace(toy_task, loss=nan_from_step_300, target=1.1,
                               eval_every_seconds=0.02)
    result = run_trial(task, Recipe(optimizer="sgd", lr=1e-2), limits(task, max_train_seconds=5))
    assert result.status == objective.DIVERGED
    steps = result.message.split("between optimizer steps ")[1].split(" (")[0]
    first, last = (int(x) for x in steps.split(" and "))
    # The memory prediction and measurement call the loss 2-3 times before the run: the NaN
    # starts at step 298 or 299 of the run. The steps named are those since the last point
    # (there were points before it, each checked finite), the last the one that read the NaN.
    assert len(result.curve) >= 1 and first > 1
    assert first <= 298 <= last == result.steps
    assert "nan" in result.message
    # Caught at the first evaluation point after it, before evaluating a NaN model.
    assert all(t < result.train_seconds and math.isfinite(m) for t, m in result.curve)


@pytest.mark.gpu
@pytest.mark.parametrize("changes", [
    {}, {"precision": "bf16", "grad_clip": 1.0}, {"precision": "fp16", "fused_optimizer": "fused"},
    {"precision": "bf16", "accumulation_steps": 2, "schedule": "cosine", "warmup_steps": 3}])
def test_gpu_steps_issue_no_host_sync(toy_task, monkeypatch, changes):
    """On a GPU torch's sync debug mode raises on any synchronising call in the steps after the
    first (``AUTOTUNE_SYNC_DEBUG``): the trial must still end normally."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    monkeypatch.setenv("AUTOTUNE_SYNC_DEBUG", "error")
    lim = limits(toy_task, max_steps=20, eval_every_seconds=1e9, max_train_seconds=1e9,
                 target=1.1)
    result = run_trial(toy_task, Recipe(lr=1e-2).replace(**changes), lim, device="cuda")
    assert result.status == objective.NOT_REACHED, result.message
    assert result.steps == 20
