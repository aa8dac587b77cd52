"""Screening: how fast one recipe's training step runs on a device, and its peak memory.

Many knobs decide only the *speed* of a step, not whether training converges (precision, the
micro-batch, checkpointing, compile, the optimizer's implementation, memory formats, the
DataLoader). ``screen`` measures that speed in a few seconds of real optimizer steps, without
evaluations and without a target, so that a search can rank its system configurations before
it spends whole convergence trials on them (``autotune.search.screening``).

What is measured, and how it matches a trial (``autotune.train.loop``):

- the same setup: the task's real batches (``autotune.train.data.make_batches``), the model
  built from the same seed, ``prepare(...)`` for the recipe, and each step is
  ``Prepared.step``, the step every trial takes;
- ``warmup_steps`` optimizer steps first, untimed for the throughput: they compile (under
  ``compile``, ``compile_seconds`` by torch's own count, reported apart), fill the allocator's
  caches and start the DataLoader's pipeline. A trial pays its compile on the clock; the
  screening reports it, and the ranking, which is of steady speed, leaves it out;
- a step slower than all of ``seconds`` ends each phase early: a warm-up step that (compile
  aside) took longer skips the other warm-up steps, and a timed step that did is the only one
  (``min_steps`` waived). Such a configuration is far behind any that a search would keep, and
  its measurement would otherwise spend the screening's time (fp16 on a CPU without fp16
  arithmetic: 1.6-4 s a step, and 7 steps each);
- then steps until ``seconds`` of training clock have passed or ``max_steps`` were taken (at
  least ``min_steps``; a model whose step takes a millisecond needs no seconds of it), timed
  as the trial's clock times them (synchronising a GPU before each reading, taking each batch
  included). The timed steps are cut into ``WINDOWS`` consecutive windows, and
  ``examples_per_second`` is the best window's examples over its seconds: another process
  taking the CPU (or the GPU) for a moment slows one window, not all of them, while a stall
  that recurs every few steps (a DataLoader that cannot keep up) is in every window, so it
  still counts. ``mean_examples_per_second`` is over all timed steps, ``step_seconds`` their
  median;
- peak memory from the same sources as a trial: on a GPU the allocator's peak over the
  whole measurement (under the budget's cap, ``cap_device_memory``, as a trial runs); on the
  CPU the tracked tensor peak of two steps on the largest micro-batch
  (``autotune.train.loop.measure_step_memory``), after the timed steps, unless
  ``track_memory`` is False and there is no budget (a search without one: 0.2-0.8 s of each
  configuration's 1.4-2.3 s on this CPU, and only a budget needs it), then ``not_measured``;
- ``floor`` (examples per second; the screener passes a share of the fastest configuration
  measured so far): a warm-up step slower than that (compile aside) ends the measurement at
  once, ``slow``, its examples per second that step's, with no timed steps and no memory
  measurement. A search would drop such a configuration whatever its memory, and measuring it
  in full cost half of a screening: on ``bert`` (2026-12-05, this CPU) two fp16
  configurations, 1/10-1/15 of the fastest's speed, took 22.6 s of a 45-s share, 15.6 s of it
  one at micro-batch 128 with checkpointing, mostly its tracked memory steps.

A multi-worker recipe (``workers > 1``) is not screened here: its steps need the workers'
launch and process group, so ``screen`` returns ``not_screened`` and a search sends such
configurations straight to convergence trials.

Statuses (``SCREEN_STATUSES``): ``ok``; ``infeasible`` (out of memory, or a measured peak over
the budget); ``unsupported`` (the device cannot run the recipe); ``error`` (anything else, in
``message``); ``not_screened``. This module knows nothing of Ray or Optuna.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from autotune.knobs import (
    compile_seconds,
    distill_problem,
    forget_compiled,
    load_teacher,
    unsupported_reason,
)
from autotune.memory import cap_device_memory, is_out_of_memory, read_peak, reset_peak
from autotune.recipe import Recipe
from autotune.tasks import Task
from autotune.train.data import make_batches
from autotune.train.loop import (
    measure_step_memory,
    pick_device,
    seed_everything,
    tracks_memory,
)
from autotune.train.parallel import prepare

OK = "ok"
INFEASIBLE = "infeasible"
UNSUPPORTED = "unsupported"
ERROR = "error"
NOT_SCREENED = "not_screened"
SLOW = "slow"
SCREEN_STATUSES = (OK, INFEASIBLE, UNSUPPORTED, ERROR, NOT_SCREENED, SLOW)

DEFAULT_SECONDS = 3.0
"""Timed training seconds per configuration: long enough for a few dozen steps of the built-in
tasks on a CPU (hundreds on a GPU), short next to a convergence trial."""
DEFAULT_WARMUP_STEPS = 2
"""Untimed steps first: the first compiles (under ``compile``) and fills the allocator's
caches, the second shows a recompile if there is one (on a CPU the memory measurement's two
tracked steps come after the timed ones, so that a ``slow`` configuration skips them)."""
MIN_STEPS = 3
"""Timed steps at least, however long each takes (a median of fewer says little)."""
MAX_STEPS = 200
"""Timed steps at most: enough for a steady median and a DataLoader's cycles."""
WINDOWS = 4
"""Windows the timed steps are cut into; the throughput is the best window's."""
MIN_WINDOW_STEPS = 3
"""Steps per window at least (fewer timed steps make fewer windows)."""


@dataclass
class ScreenResult:
    """What ``screen`` measured for one recipe."""

    status: str
    """One of ``SCREEN_STATUSES``."""
    examples_per_second: float | None = None
    """Training examples per second of the timed steps (after warm-up, compile excluded), in
    the best of their windows (see the module docstring)."""
    mean_examples_per_second: float | None = None
    """Over all the timed steps."""
    step_seconds: float | None = None
    """Median seconds of one timed optimizer step."""
    steps: int = 0
    """Timed optimizer steps."""
    timed_seconds: float = 0.0
    """Training clock of the timed steps."""
    warmup_steps: int = 0
    warmup_seconds: float = 0.0
    """Clock of the warm-up steps, compile included."""
    compile_seconds: float = 0.0
    """Of the warm-up (and timed) steps: torch's compile time (``compile``), reported apart."""
    setup_seconds: float = 0.0
    """Building the model, the batches, the memory measurement on a CPU, ``prepare``."""
    peak_memory_bytes: int | None = None
    peak_memory_source: str | None = None
    message: str = ""
    device: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def screen(task: Task, recipe: Recipe, device: str | None = None, *,
           seconds: float = DEFAULT_SECONDS, warmup_steps: int = DEFAULT_WARMUP_STEPS,
           seed: int = 0, budget_bytes: int | None = None,
           min_steps: int = MIN_STEPS, max_steps: int = MAX_STEPS,
           floor: float | None = None, track_memory: bool = True) -> ScreenResult:
    """Measure ``recipe``'s steady training speed and peak memory on ``device`` (see the
    module docstring). Never raises for what the recipe does (out of memory, unsupported, a
    crash of its step): those are statuses."""
    dev = pick_device(device)
    result = ScreenResult(status=OK, device=str(dev))
    if recipe.workers > 1:
        result.status = NOT_SCREENED
        result.message = (f"{recipe.workers} workers ({recipe.parallelism}): multi-worker "
                          "recipes are not screened; they go straight to convergence trials")
        return result
    reason = unsupported_reason(recipe, dev.type) or distill_problem(task, recipe)
    if reason:
        result.status, result.message = UNSUPPORTED, f"not possible here: {reason}"
        return result
    batches = None
    try:
        setup_start = time.perf_counter()
        teacher = load_teacher(task, recipe)
        cap_device_memory(dev, budget_bytes)
        reset_peak(dev)
        seed_everything(seed)
        model = task.build_model()
        model.train()
        batches = make_batches(task, recipe, seed, dev)
        if recipe.compile != "none":
            forget_compiled()  # compiles as a fresh run would
        prepared = prepare(model, recipe, dev, teacher)  # single-worker: never a pipeline
        batches.start()
        result.setup_seconds = time.perf_counter() - setup_start
        _run_steps(task, recipe, prepared, batches, dev, result, seconds, warmup_steps,
                   (min_steps, max(min_steps, max_steps)), floor)
        del prepared, model  # freed before the memory measurement and the cache's release
        if result.status == SLOW:
            return result
        tracked = None
        tracking = tracks_memory(track_memory, budget_bytes, dev)
        if dev.type == "cpu" and tracking:  # after the timed steps: a slow one skips it
            memory_start = time.perf_counter()
            phases = measure_step_memory(task, recipe, dev, seed, teacher=teacher)
            tracked = max(p["total"] for p in phases.values())
            result.setup_seconds += time.perf_counter() - memory_start
        peak = read_peak(dev, tracked, measured=tracking)
        result.peak_memory_bytes, result.peak_memory_source = peak.peak_bytes, peak.source
        if budget_bytes is not None and peak.peak_bytes is not None \
                and peak.peak_bytes > budget_bytes:
            result.status = INFEASIBLE
            result.message = (f"peak memory {peak.peak_bytes} bytes ({peak.source}) exceeds "
                              f"the budget of {budget_bytes} bytes")
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        _record_failure(result, exc, dev)
    finally:
        if batches is not None:
            batches.close()
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _run_steps(task: Task, recipe: Recipe, prepared: Any, batches: Any, dev: torch.device,
               result: ScreenResult, seconds: float, warmup_steps: int,
               steps: tuple[int, int], floor: float | None = None) -> None:
    """The warm-up steps, then the timed ones (see the module docstring); ``slow`` instead
    of the timed steps when a warm-up step is under ``floor`` examples per second."""
    examples_per_step = recipe.batch_size * recipe.accumulation_steps
    compiled_before = compile_seconds()
    start = _now(dev)
    while result.warmup_steps < warmup_steps:
        began, compiling = _now(dev), compile_seconds()
        _step(task, recipe, prepared, batches)
        result.warmup_steps += 1
        took = max(_now(dev) - began - (compile_seconds() - compiling), 1e-9)
        if floor is not None and examples_per_step / took < floor:
            result.warmup_seconds = _now(dev) - start
            result.compile_seconds = max(0.0, compile_seconds() - compiled_before)
            result.status, result.examples_per_second = SLOW, examples_per_step / took
            result.message = (f"a warm-up step ran {examples_per_step / took:.1f} examples/s, "
                              f"under the floor of {floor:.1f}: not measured further")
            return
        if took > seconds:
            break  # a step slower than all the timed seconds: no more warming up
    result.warmup_seconds = _now(dev) - start
    durations: list[float] = []
    last = _now(dev)
    least, most = steps
    while not durations or (len(durations) < least and durations[0] <= seconds) \
            or (sum(durations) < seconds and len(durations) < most):
        _step(task, recipe, prepared, batches)
        now = _now(dev)
        durations.append(now - last)
        last = now
    result.compile_seconds = max(0.0, compile_seconds() - compiled_before)
    result.steps = len(durations)
    result.timed_seconds = sum(durations)
    result.mean_examples_per_second = examples_per_step * len(durations) / result.timed_seconds
    result.examples_per_second = best_window_rate(durations, examples_per_step)
    result.step_seconds = statistics.median(durations)


def best_window_rate(durations: list[float], examples_per_step: int) -> float:
    """Examples per second of the fastest of the windows of ``durations`` (seconds of each
    step in order): see the module docstring."""
    return max(examples_per_step * len(w) / sum(w) for w in _windows(durations))


def _windows(durations: list[float]) -> list[list[float]]:
    """``durations`` cut into up to ``WINDOWS`` consecutive windows of about equal steps, each
    of ``MIN_WINDOW_STEPS`` at least (one window when there are too few)."""
    count = max(1, min(WINDOWS, len(durations) // MIN_WINDOW_STEPS))
    size, extra = divmod(len(durations), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (i < extra)
        out.append(durations[start:end])
        start = end
    return out


def _step(task: Task, recipe: Recipe, prepared: Any, batches: Any) -> None:
    """One optimizer step as a trial takes it (a NaN loss is not screening's concern)."""
    micro = [batches.next() for _ in range(recipe.accumulation_steps)]
    prepared.step(task, micro, strict=False, lazy=True)


def _now(dev: torch.device) -> float:
    """The training clock's reading: a GPU finishes its queued work first."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter()


def _record_failure(result: ScreenResult, exc: Exception, dev: torch.device) -> None:
    if is_out_of_memory(exc):
        result.status = INFEASIBLE
        result.message = f"out of memory: {str(exc).splitlines()[0][:300]}"
    else:
        result.status = ERROR
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        result.message = f"{type(exc).__name__}: {first}"
    result.examples_per_second = result.mean_examples_per_second = None
    result.step_seconds = None
