"""One process's part of a trial: train a task's model with a recipe until the target metric
or the time limit (``train_in_process``; ``autotune.train.trial.run_trial`` is the entry point).

It is an ordinary function: it runs the same way in a Ray Tune worker, in ``autotune train``,
in a worker process of a multi-worker trial, and in a unit test. It never raises for what a
recipe does to a run (out of memory, NaN loss, over budget): those end in a ``TrialResult``
with the matching status, so a search records them and goes on. Each optimizer step is
``Prepared.step`` (``autotune.train.parallel``), that is ``autotune.knobs.optimizer_step``.

The time-to-target clock counts training only: forward, backward and optimizer steps,
including taking each batch (slicing tensors, or waiting for a DataLoader: what its knobs
change; ``autotune.train.data``). It is paused for evaluations (which are measured separately)
and does not include model building, moving tensor data to the device, loading a
distillation teacher (a checkpoint, trained once and cached like a download), or starting the
DataLoader's workers (``loader_start_seconds``); the teacher's forward pass in each step is on
it. It does include compiling (``compile``):
torch compiles in the first steps (and recompiles where a shape changes), which a user's run
pays too; ``compile_seconds`` records that part apart, by torch's own count. Evaluations run a
compiled model eagerly, so they never compile. Structured pruning after
``prune_after_steps`` dense steps (``Prepared.prune_units``: the cut, the optimizer's state
sliced, and the recompile that follows under ``compile``) is on it too.

No host synchronisation per step: on a GPU, reading a loss (``float(loss)``) or waiting for
the device before reading the clock stalls the host until the step's kernels finish, so the
next step's launches cannot overlap the device's work. The step therefore returns its loss as
a device tensor (``lazy``), the loop sums them, and reads the sum, the device clock and the
finite check only at evaluation points (``TrainingClock.pause`` waits for the device there, so
every recorded time is the device's): a NaN/inf loss ends the trial as *diverged* within one
evaluation interval. Between evaluations the clock is read on the host only, to decide when
the next evaluation is due (a host that runs ahead of the device evaluates a little late,
never early). ``AUTOTUNE_SYNC_DEBUG=error`` (or ``warn``) makes torch raise (warn) on any
synchronising CUDA call in the steps after the first (``torch.cuda.set_sync_debug_mode``),
which is how the GPU check proves it; fp16's loss scaler with an optimizer that is not fused
is the known exception (``GradScaler.step`` reads whether the gradients hold inf).

Memory (``autotune.memory``): every trial records the predicted peak per device beside the
measured one. On a GPU the measured peak is the allocator's over the whole trial, and a budget
smaller than the card caps the process's memory before training starts. On the CPU it is the
peak of tracked tensor memory of two optimizer steps on the task's largest micro-batch, taken
during setup on a fresh copy of the model (``measure_step_memory``): tracking every tensor of
the whole run would slow training, and tracking the first real steps would either charge the
tracker's overhead to time-to-target or hand the trial steps its clock did not count. The
peak of a step is reached by its second step (optimizer state exists from the first), and the
largest micro-batch is the worst a step meets, so this is the peak a budget must hold. The
copy is built from the same seed and the RNG is reseeded after it, so the timed run is the
same run as without the measurement (its first steps run on warmed-up kernels). The CPU's
prediction and tracked steps cost 0.4-1.5 s of a trial's setup on the built-in tasks (a
FakeTensor trace of about 0.5 s, and the steps); a search without a memory budget asks its CPU
trials to skip both (``TrialLimits.track_memory``, ``tracks_memory``): their records say
``not_measured``.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import time

import torch
import torch.distributed as dist

from autotune import objective
from autotune.knobs import (
    Diverged,
    autocast_context,
    compile_seconds,
    distill_problem,
    eager,
    forget_compiled,
    graphs_compiled,
    load_teacher,
    unsupported_reason,
)
from autotune.memory import (
    CPU_RSS,
    TensorTracker,
    cap_device_memory,
    is_out_of_memory,
    largest_batch,
    largest_validation,
    predict_peak,
    read_peak,
    reset_peak,
)
from autotune.recipe import Recipe
from autotune.tasks import Task, evaluate_metric, move_batch
from autotune.train.clock import TrainingClock
from autotune.train.data import LoaderBatches, TensorBatches, inactive_data_knobs, make_batches
from autotune.train.evaluation import Evaluator, paced_point
from autotune.train.parallel import Prepared, prepare
from autotune.train.pipeline import PipelineSplitError
from autotune.train.result import ReportFn, TrialLimits, TrialResult

_NOTHING_COMPILED = (
    "compile: dynamo compiled no graph of this model, so it ran eagerly (a graph break it "
    "cannot resume from, such as one inside a loop; TORCH_LOGS=graph_breaks shows where)")


class _Unsupported(Exception):
    """The recipe cannot run on this device (``autotune.knobs.unsupported_reason``)."""


SYNC_DEBUG_ENV = "AUTOTUNE_SYNC_DEBUG"
"""``warn`` or ``error``: torch's CUDA sync debug mode in a trial's steps after the first
(see the module docstring); anything else, or unset: off."""


class _SyncDebug:
    """``AUTOTUNE_SYNC_DEBUG`` on a GPU: torch raises (``error``) or warns (``warn``) on a
    synchronising CUDA call while it is on; a no-op elsewhere."""

    def __init__(self, device: torch.device) -> None:
        mode = os.environ.get(SYNC_DEBUG_ENV, "").strip().lower()
        self.mode = mode if device.type == "cuda" and mode in ("warn", "error") else None

    def on(self) -> None:
        if self.mode is not None:
            torch.cuda.set_sync_debug_mode(self.mode)

    def off(self) -> None:
        if self.mode is not None:
            torch.cuda.set_sync_debug_mode(0)


def pick_device(device: str | None = None) -> torch.device:
    """The device a trial trains on: the one asked for, else a GPU if present, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def train_in_process(
    task: Task,
    recipe: Recipe,
    limits: TrialLimits,
    report: ReportFn | None = None,
    device: str | None = None,
) -> TrialResult:
    """This process's part of a trial: the whole trial for one worker, or, inside a worker of
    a multi-worker trial (process group initialised), that worker's share, where only rank 0
    reports. ``autotune.train.run_trial`` is the entry point that also starts the workers.

    Trains ``task``'s model with ``recipe`` until ``limits.target`` or the time limit;
    ``report`` is called after each evaluation with the running measurements (the fields of
    ``TrialResult`` plus ``final``), so a scheduler can stop a losing trial early.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    dev = pick_device(device)
    result = TrialResult(status=objective.RUNNING, score=0.0, device=str(dev))
    setup_start = time.perf_counter()
    batches: TensorBatches | LoaderBatches | None = None
    try:
        reason = unsupported_reason(recipe, dev.type) or distill_problem(task, recipe)
        if reason:
            raise _Unsupported(reason)
        teacher = load_teacher(task, recipe)  # a recipe that distils; setup, off the clock
        result.predicted_peak_bytes = limits.predicted_peak_bytes
        tracking = tracks_memory(limits.track_memory, limits.budget_bytes, dev)
        if result.predicted_peak_bytes is None and rank == 0 and tracking:
            result.predicted_peak_bytes = _predict(task, recipe, dev, result)
        result.memory_cap_fraction = cap_device_memory(dev, limits.budget_bytes)
        reset_peak(dev)
        if dev.type == "cpu" and tracking:
            _measure_cpu_peak(task, recipe, dev, limits.seed, result, world, teacher)
        result.inactive_knobs = inactive_data_knobs(task, recipe, dev.type)
        seed_everything(limits.seed)
        model = task.build_model()
        model.train()
        # Pipeline stages all take the same batch (stage 0 its inputs, the last its labels).
        shard = (0, 1) if recipe.parallelism == "pipeline" else (rank, world)
        batches = make_batches(task, recipe, limits.seed, dev, *shard)
        if recipe.compile != "none":
            forget_compiled()  # compiles as a fresh run would, whatever ran here before
        prepared = prepare(model, recipe, dev, teacher, task=task)
        result.inactive_knobs += prepared.inactive
        result.loader_start_seconds = batches.start()
        result.setup_seconds = time.perf_counter() - setup_start
        _train(task, recipe, limits, prepared, batches, dev, result,
               report if rank == 0 else None, world)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded trial
        _record_failure(result, exc, dev, limits)
    finally:
        if batches is not None:
            batches.close()
    _finish(result, limits, dev)
    if report is not None and rank == 0:
        report({**result.to_dict(), "final": True})
    return result


def tracks_memory(asked: bool, budget_bytes: int | None, dev: torch.device) -> bool:
    """Whether a run (a trial, a screening) measures its peak memory, and a trial predicts it
    (``TrialLimits.track_memory``): always with a budget or on a GPU; on a CPU without a
    budget, as ``asked``."""
    return asked or budget_bytes is not None or dev.type != "cpu"


def _record_failure(result: TrialResult, exc: Exception, dev: torch.device,
                    limits: TrialLimits) -> None:
    """What ended the trial, as its status and message: diverged (NaN/inf loss), infeasible
    (not possible on this device, or out of memory), else an error."""
    if isinstance(exc, Diverged):
        result.status, result.message = objective.DIVERGED, str(exc)
    elif isinstance(exc, (_Unsupported, PipelineSplitError)):
        result.status, result.message = objective.INFEASIBLE, f"not possible here: {exc}"
    elif is_out_of_memory(exc):
        result.status = objective.INFEASIBLE
        result.message = f"out of memory: {str(exc).splitlines()[0][:300]}"
        measured = read_peak(dev, result.tracked_peak_bytes).peak_bytes
        result.message += _estimator_miss(result, measured, limits)
    else:
        result.status = objective.ERROR
        first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
        result.message = f"{type(exc).__name__}: {first_line}"
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _decide(flags: list[float], world: int) -> list[float]:
    """Combine per-worker flags (max over workers), so that every worker takes the same branch:
    a worker that leaves a loop early would leave the others waiting in a collective."""
    if world == 1:
        return flags
    tensor = torch.tensor(flags, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def _train(
    task: Task,
    recipe: Recipe,
    limits: TrialLimits,
    prepared: Prepared,
    batches: TensorBatches | LoaderBatches,
    dev: torch.device,
    result: TrialResult,
    report: ReportFn | None,
    world: int = 1,
) -> None:
    clock = TrainingClock(dev)
    sync_debug = _SyncDebug(dev)
    next_eval = limits.eval_every_seconds
    evaluator = Evaluator(task, limits.target, limits.higher_is_better, limits.quick_eval)
    # Data-parallel workers each take their own batches; pipeline stages share one.
    examples_per_step = recipe.batch_size * recipe.accumulation_steps * (
        1 if recipe.parallelism == "pipeline" else world)
    graphs_before = graphs_compiled()
    window: torch.Tensor | None = None  # sum of the losses since the last finite check
    window_first = 1  # the first optimizer step in it
    clock.start()
    try:
        while True:
            micro = [batches.next() for _ in range(recipe.accumulation_steps)]
            compiling_since = compile_seconds() if prepared.compiled else 0.0
            loss = prepared.step(task, micro, strict=False, lazy=True)
            assert isinstance(loss, torch.Tensor)
            window = loss if window is None else window + loss
            if prepared.compiled:  # on the clock too: time-to-target includes compiling
                result.compile_seconds += max(0.0, compile_seconds() - compiling_since)
                if result.steps == 0 and graphs_compiled() == graphs_before:
                    result.inactive_knobs.append(_NOTHING_COMPILED)
            result.steps += 1
            result.examples += examples_per_step
            if result.steps == recipe.prune_after_steps:
                prepared.prune_units()  # structured pruning after the dense steps, on the clock
            elapsed = clock.peek()
            out_of_steps = limits.max_steps is not None and result.steps >= limits.max_steps
            if world > 1:  # worker 0's clock decides for all (max of the others' zeros)
                with clock.host_work():
                    elapsed, stop = _decide(
                        [_mine(elapsed), float(out_of_steps)], world)
                out_of_steps = bool(stop)
            if not (elapsed >= next_eval or elapsed >= limits.max_train_seconds
                    or out_of_steps):
                if result.steps == 1:
                    sync_debug.on()  # the first step may wait (compiling, lazy set-up)
                continue
            sync_debug.off()
            elapsed = clock.pause()  # waits for the device: the time of the work done
            window_sum = float(window)  # the one read of the losses since the last check
            finite = math.isfinite(window_sum)
            diverged, elapsed = _decide([float(not finite), _mine(elapsed)], world)
            if diverged:
                result.train_seconds = elapsed
                what = f"{window_sum}" if not finite else "non-finite on another worker"
                raise Diverged(f"loss became {what} between optimizer steps {window_first} "
                               f"and {result.steps} (checked at each evaluation point)")
            window, window_first = None, result.steps + 1
            out_of_time = elapsed >= limits.max_train_seconds
            if _evaluate(task, recipe, limits, prepared, dev, result, elapsed, out_of_time,
                         out_of_steps, evaluator):
                return
            while next_eval <= elapsed:
                next_eval += limits.eval_every_seconds
            # Every worker must agree on the next point (each would otherwise space it by its
            # own evaluations' seconds, and the one that evaluates first would leave the
            # others waiting in a collective): the slowest worker's evaluations space it.
            (eval_total,) = _decide([result.eval_seconds], world)
            next_eval = paced_point(next_eval, eval_total)
            if report is not None:
                _finish(result, limits, dev, final=False)
                report({**result.to_dict(), "final": False})
            clock.start()
            sync_debug.on()
    finally:
        sync_debug.off()


def _evaluate(task: Task, recipe: Recipe, limits: TrialLimits, prepared: Prepared,
              dev: torch.device, result: TrialResult, elapsed: float, out_of_time: bool,
              out_of_steps: bool, evaluator: Evaluator) -> bool:
    """One evaluation point at ``elapsed`` training seconds, off the clock: records the
    metric (a part of the validation set's while far from the target, else the full set's:
    ``autotune.train.evaluation``) and returns True when the trial ends here (target reached
    on the full set, or out of time or steps)."""
    eval_start = time.perf_counter()
    # DeepSpeed's bf16/fp16 hold 16-bit weights, so float inputs need autocast there too.
    ctx = autocast_context(recipe.precision, dev.type) if prepared.engine \
        else contextlib.nullcontext()
    with ctx, eager():  # a compiled model evaluates eagerly: no compile off the clock
        metric, full = evaluator(prepared.evaluation_model(), dev,
                                 final=out_of_time or out_of_steps)
    result.eval_seconds += time.perf_counter() - eval_start
    result.train_seconds = elapsed
    result.curve.append((round(elapsed, 4), metric))
    result.last_metric = metric
    result.best_metric = objective.best_of(result.best_metric, metric,
                                           limits.higher_is_better)
    result.eval_points_full, result.eval_points_quick = (evaluator.full_points,
                                                         evaluator.quick_points)
    if full and objective.reaches(metric, limits.target, limits.higher_is_better):
        result.status, result.tta_seconds = objective.REACHED, elapsed
        return True
    if out_of_time or out_of_steps:
        result.status = objective.NOT_REACHED
        short = "<" if limits.higher_is_better else ">"
        result.message = (
            f"best {task.metric} {result.best_metric:.4f} {short} target "
            f"{limits.target} after {elapsed:.1f}s of training ({result.steps} steps)"
        )
        return True
    return False


def _mine(elapsed: float) -> float:
    """This worker's say in the workers' shared clock reading: worker 0's time, the others'
    zeros (``_decide`` takes the maximum)."""
    return elapsed if not dist.is_initialized() or dist.get_rank() == 0 else 0.0


def _finish(
    result: TrialResult, limits: TrialLimits, dev: torch.device, final: bool = True
) -> None:
    """Fill in memory peaks, the budget verdict and the score."""
    measured = tracks_memory(limits.track_memory, limits.budget_bytes, dev)
    peak = read_peak(dev, result.tracked_peak_bytes, measured=measured)
    result.peak_memory_bytes = peak.peak_bytes
    result.peak_memory_source = peak.source
    result.peak_reserved_bytes = peak.reserved_bytes
    result.peak_rss_bytes = peak.rss_bytes
    if result.predicted_peak_bytes and peak.peak_bytes is not None \
            and peak.source != CPU_RSS:  # RSS is not tensor memory
        result.prediction_error = round(peak.peak_bytes / result.predicted_peak_bytes - 1, 4)
    if (
        final
        and limits.budget_bytes is not None
        and peak.peak_bytes is not None
        and peak.peak_bytes > limits.budget_bytes
        and result.status not in objective.FAILED_STATES
    ):
        result.message = (
            f"peak memory {peak.peak_bytes} bytes ({peak.source}) exceeds the budget of "
            f"{limits.budget_bytes} bytes; {result.status} before that"
            + _estimator_miss(result, peak.peak_bytes, limits)
        )
        result.status = objective.INFEASIBLE
        result.tta_seconds = None
    status = result.status if final else objective.RUNNING
    result.score = objective.score(
        status, result.tta_seconds, result.best_metric, limits.target, limits.max_train_seconds,
        limits.higher_is_better,
    )


def _predict(task: Task, recipe: Recipe, dev: torch.device, result: TrialResult) -> int | None:
    """The predicted peak per device (cached per process); None, with a note in the
    message, when the estimator cannot trace this task."""
    try:
        return predict_peak(task, recipe, dev.type).peak_bytes
    except Exception as exc:  # noqa: BLE001 - a missing estimate must not fail the trial
        result.message = f"memory estimate failed: {type(exc).__name__}: {exc}"[:300]
        return None


def _estimator_miss(result: TrialResult, measured: int, limits: TrialLimits) -> str:
    """The estimator's miss in words, for a trial that ran out of memory or over budget (it
    was predicted to fit, or it would not have been launched)."""
    predicted = result.predicted_peak_bytes
    if not predicted:
        return ""
    budget = f" of the budget {limits.budget_bytes}" if limits.budget_bytes else ""
    return (f"; the estimator missed: predicted peak {predicted} bytes{budget}, measured "
            f"{measured} bytes ({measured / predicted - 1:+.1%})")


def _measure_cpu_peak(task: Task, recipe: Recipe, dev: torch.device, seed: int,
                      result: TrialResult, world: int,
                      teacher: torch.nn.Module | None = None) -> None:
    """Fill in the CPU's tracked peak. Should the tracker fail on some model (not for lack of
    memory), a single-worker trial goes on with the process's RSS as its peak, and says so;
    the workers of a parallel trial cannot leave their collectives alone, so they fail."""
    try:
        phases = measure_step_memory(task, recipe, dev, seed, teacher=teacher)
    except Exception as exc:
        if world > 1 or is_out_of_memory(exc):
            raise
        result.message = f"tracked memory unavailable ({type(exc).__name__}: {exc})"[:300]
        return
    result.memory_breakdown = max(phases.values(), key=lambda p: p["total"])
    result.tracked_peak_bytes = result.memory_breakdown["total"]


def measure_step_memory(
    task: Task, recipe: Recipe, dev: torch.device, seed: int, steps: int = 2,
    teacher: torch.nn.Module | None = None,
) -> dict[str, dict[str, int]]:
    """Peak tracked tensor memory of ``steps`` optimizer steps of ``recipe`` on the task's
    largest micro-batch (``autotune.memory.largest_batch``), live on real tensors: a fresh
    copy of the model (same seed) is prepared for the recipe's parallel mode inside the
    tracker (so the mode's own buffers count) and discarded after. Returns the breakdown at
    the peak (``parameters``, ``gradients``, ``optimizer``, ``activations``, ``total``) of
    each phase: ``prepare`` (the parallel mode's setup), ``step1``, ``step2``... and
    ``evaluation`` (``_measure_evaluation``: a trial's evaluation, which can peak above its
    steps). ``teacher`` (a recipe that distils) is tracked with the model: its weights count as
    parameters, its forward pass as activations.

    In a multi-worker run every worker calls this at the same point, so the collectives of
    the parallel mode's setup and steps pair up. Why a copy, during setup: see the module
    docstring.
    """
    seed_everything(seed)
    model = task.build_model()
    model.train()
    batch = move_batch(largest_batch(task, recipe.batch_size), dev)
    evaluation = largest_validation(task)  # its rows, like the training data, untracked
    # A pipeline is split (torch.export) before the tracker: tracing the model's modules
    # under it leaves module hooks that break the stages' backward pass. The full model (all
    # of its weights stay on each worker) is tracked as it is; the stage's optimizer state,
    # gradients and activations arise inside.
    pipelined = recipe.parallelism == "pipeline"
    if pipelined:
        prepared = prepare(model, recipe, dev, teacher, task=task)
    with TensorTracker(model, *([teacher] if teacher is not None else [])) as tracker:
        tracker.phase("prepare")
        # Eager, as the memory prediction traces it: compiling here would run torch.compile
        # inside the tracker, off the clock, and warm the run's compile up front.
        if not pipelined:
            prepared = prepare(model, recipe.replace(compile="none"), dev, teacher, task=task)
        for i in range(steps):
            tracker.phase(f"step{i + 1}")
            prepared.step(task, [batch] * recipe.accumulation_steps, strict=False)
        tracker.phase("evaluation")
        _measure_evaluation(evaluation, recipe, prepared, dev)
    peaks = tracker.phase_peaks
    del prepared, model, batch, evaluation, tracker
    gc.collect()
    return peaks


def _measure_evaluation(task: Task, recipe: Recipe, prepared: Prepared,
                        dev: torch.device) -> None:
    """The metric of ``task``, cut to its largest evaluation batch (``largest_validation``),
    run as ``_evaluate`` runs it (autocast for DeepSpeed's 16-bit weights only): a trial evaluates
    between steps with the model states resident, on batches of ``eval_batch_size`` that
    may hold more activations than a checkpointed or small step, so an evaluation can be the
    trial's peak (what the prediction's ``evaluation`` phase traces)."""
    ctx = autocast_context(recipe.precision, dev.type) if prepared.engine \
        else contextlib.nullcontext()
    with ctx:
        evaluate_metric(task, prepared.evaluation_model(), dev)
