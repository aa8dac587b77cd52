"""The GPU check: autotune's whole GPU path in one command, timed part by part.

Why: a GPU machine is lent only now and then, for minutes; this check is prepared and tested
here (its CPU mode runs in the default test tier) so that whoever has the machine spends those
minutes measuring. Four parts, each timed and guarded (a failing part is recorded with its
error, and the next part runs):

1. ``baseline``: the ``bert`` task's baseline recipe over 2-3 seeds (``run_trial``): its
   time-to-target, steps/s and the metric curve, with the model size the task builds on this
   device, and whether its target and time limit look sensible for it (the numbers needed to
   recalibrate them; nothing is recalibrated here).
2. ``search``: a short real search (``search(SearchRequest(model="bert", budget_bytes=16e9,
   ...))``) on Ray Tune and Optuna: the winner, its speedup over the baseline, and whether every
   launched trial's measured peak (``peak_memory_bytes``: on a GPU ``max_memory_allocated``
   under the per-process cap at the budget) stayed within the budget.
3. ``memory``: ``predict_peak`` against the measured peak of a short real trial, for at least
   10 recipes (precision x batch size x checkpointing, and one-device knobs that change memory):
   median and worst relative error. On a GPU the allocator's reserved peak is read too.
4. ``mfu``: model FLOP utilisation of the search's winner (else the baseline): FLOPs of one
   real training step (``torch.utils.flop_counter.FlopCounterMode``) over the measured step
   time and the chip's dense bf16 peak (``PEAK_BF16_FLOPS``; none on a CPU), and the step time
   with ``compile`` default beside eager where it is measured.
5. ``sync``: no host synchronisation per step: short trials of several recipes with
   ``AUTOTUNE_SYNC_DEBUG=error`` (torch raises on any synchronising CUDA call in the steps,
   ``autotune.train.loop``), and the trial loop's step throughput against a plain
   hand-written loop in fp32 and bf16 (``benchmarks.throughput``; the goal is 0.98).

It prints a table per part and writes ``gpu_check.json`` (after every part, so a run cut short
keeps what it measured) and ``gpu_check.md`` to ``--out``. ``docs/gpu.md`` says how to read
them. From the repository root::

    .venv/bin/python -m benchmarks.gpu_check --device cpu --out /tmp/gc   # tiny, ~40 s
    python3 -m benchmarks.gpu_check --quick --device cuda --out $OUT       # ~8 min, one H200

``--deadline-s`` bounds the whole check: a part that would start with too little time left is
recorded as skipped, and the search (last by default) gets what is left as its time budget.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from autotune import objective
from autotune.knobs import unsupported_reason
from autotune.knobs.compiler import compile_seconds, forget_compiled
from autotune.memory import SAFETY_MARGIN
from autotune.recipe import Recipe, baseline_recipe
from autotune.search import SearchRequest, search
from autotune.tasks import Task, load_task
from autotune.train import TrialLimits, TrialResult, run_trial, seed_everything
from autotune.train.data import make_batches
from autotune.train.loop import SYNC_DEBUG_ENV
from autotune.train.parallel import prepare
from autotune.units import format_bytes
from benchmarks.throughput import throughput_rows

SCHEMA = 1
"""Version of ``gpu_check.json``'s layout; bump when a key changes meaning."""
BUDGET_BYTES = 16 * 10**9
"""The budget of the search part, as in ``autotune search --model bert --budget 16GB``."""
PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,
    "H800": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}
"""Dense (no sparsity) bf16 tensor-core peak FLOP/s by a name found in
``torch.cuda.get_device_name()`` (vendors' datasheets; SXM parts). Longest name matched first,
so ``GH200`` is not read as ``H200``."""


@dataclass(frozen=True)
class Profile:
    """The sizes of one run of the check: tiny on a CPU, minutes on a GPU."""

    name: str
    task_options: dict[str, Any]
    """Options of the ``bert`` task (``size``, ``max_length``); empty: the device's default."""
    seeds: int
    """Seeds of the baseline part."""
    max_train_seconds: float | None
    """Training-time limit of a baseline trial; None: the task's own limit (what is checked)."""
    eval_every_seconds: float | None
    """None: the task's."""
    target: float | None
    """None: the task's own target (what is checked)."""
    search_trials: int
    search_time_s: float
    search_trial_seconds: float | None
    confirm_top: int
    confirm_seeds: int
    screen: bool | None
    """The search's screening of system configurations (``SearchRequest.screen``); None: the
    search's default."""
    cpus_per_trial: float | None
    """The search's ``cpus_per_trial``; None: its default (on a GPU, the GPU's share of the
    CPUs; on a CPU, the whole machine, one trial at a time)."""
    memory_recipes: tuple[dict[str, Any], ...]
    memory_steps: int
    """Optimizer steps of each memory trial."""
    timing_steps: int
    """Steps timed for the step time of the FLOP-utilisation part (after warm-up)."""
    compile: bool
    """Measure ``compile`` default's step time too (minutes on a GPU for BERT-base)."""
    sync_steps: int = 30
    """Optimizer steps of each trial of the ``sync`` part."""
    throughput_steps: int = 100
    """Timed steps per run of the ``sync`` part's throughput comparison."""
    throughput_reps: int = 2
    threads: int | None = None
    """torch's CPU threads in this process while the check runs; None: torch's default. The
    CPU mode uses 1: on a machine shared with other work, two threads fighting for two cores
    made an evaluation of BERT-tiny 4x slower than one thread (measured: 1.8-2.5 s against
    0.5 s)."""


def _grid(precisions: tuple[str, ...], batches: tuple[int, ...],
          extra: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    """Precision x batch size x checkpointing, then the ``extra`` recipes."""
    grid = tuple({"precision": p, "batch_size": b, "checkpointing": c}
                 for p in precisions for b in batches for c in (False, True))
    return grid + extra


ONE_DEVICE_EXTRA: tuple[dict[str, Any], ...] = (
    {"batch_size": 32, "optimizer": "sgd"},
    {"batch_size": 32, "accumulation_steps": 2},
    {"batch_size": 64, "prune_ratio": 0.3},
)
"""One-device knobs that change memory. The parallel modes with one worker are left out: they
need a process group, which only a multi-worker trial starts."""

CPU_TARGET = 0.56
"""The CPU profile's target: just under the validation set's majority-class accuracy (0.5635),
so that its seconds-long trials reach it and every part has numbers (a winner, a speedup).
It checks the plumbing; its times mean nothing for calibration."""

PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu", task_options={"size": "tiny", "max_length": 16}, seeds=2,
        max_train_seconds=1.0, eval_every_seconds=0.5, target=CPU_TARGET, search_trials=2,
        search_time_s=40.0, search_trial_seconds=1.0, confirm_top=0, confirm_seeds=1,
        screen=False, cpus_per_trial=1.0,
        memory_recipes=({"batch_size": 16}, {"batch_size": 16, "checkpointing": True},
                        {"batch_size": 16, "precision": "bf16"}),
        memory_steps=1, timing_steps=3, compile=False, sync_steps=3, throughput_steps=5,
        throughput_reps=1, threads=1),
    "gpu-quick": Profile(
        name="gpu-quick", task_options={}, seeds=2, max_train_seconds=None,
        eval_every_seconds=None, target=None, search_trials=6, search_time_s=150.0,
        search_trial_seconds=None, confirm_top=1, confirm_seeds=1, screen=None,
        cpus_per_trial=None,
        memory_recipes=_grid(("fp32", "bf16", "fp16"), (32, 128), ()),
        memory_steps=3, timing_steps=20, compile=True),
    "gpu": Profile(
        name="gpu", task_options={}, seeds=3, max_train_seconds=None,
        eval_every_seconds=None, target=None, search_trials=20, search_time_s=480.0,
        search_trial_seconds=None, confirm_top=3, confirm_seeds=2, screen=None,
        cpus_per_trial=None,
        memory_recipes=_grid(("fp32", "bf16", "fp16"), (32, 128),
                             ONE_DEVICE_EXTRA + ({"batch_size": 32, "tf32": True},
                                                 {"batch_size": 32, "fused_optimizer": "fused"})),
        memory_steps=3, timing_steps=30, compile=True),
}
PARTS = ("baseline", "sync", "memory", "mfu", "search")
"""In the order they run by default: the search last, so that ``--deadline-s`` gives it what
the others left (``mfu`` then measures the baseline in bf16, not the search's winner)."""
PART_MIN_SECONDS = {"baseline": 60.0, "sync": 30.0, "memory": 45.0, "mfu": 45.0, "search": 90.0}
"""Under ``--deadline-s``, a part starts only with at least this many seconds left."""
SEARCH_END_MARGIN_S = 20.0
"""Seconds kept after the search's time budget for the table and the JSON."""
PROBED_MODULES = ("ray", "ray.tune", "optuna", "deepspeed")


@dataclass
class Context:
    """What the parts share: the device, the task, the profile, and earlier parts' results."""

    device: str
    profile: Profile
    work: Path
    """Scratch folder (the search's run directory)."""
    task: Task | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    deadline: float | None = None
    """``time.perf_counter()`` by which the check must end (``--deadline-s``); None: none."""

    def left(self) -> float:
        """Seconds left before the deadline (infinite without one)."""
        return float("inf") if self.deadline is None else self.deadline - time.perf_counter()

    def time_for_search(self) -> float:
        """The search's time budget: the profile's, or what the deadline leaves."""
        return max(30.0, min(self.profile.search_time_s, self.left() - SEARCH_END_MARGIN_S))

    def load(self) -> Task:
        if self.task is None:
            self.task = load_task("bert", self.device, dict(self.profile.task_options))
        return self.task


# -- part 1: the baseline's time-to-target ---------------------------------------------------


def part_baseline(ctx: Context) -> dict[str, Any]:
    """The baseline recipe over ``profile.seeds`` seeds, and whether the task's target and
    limit suit the model built on this device."""
    task, p = ctx.load(), ctx.profile
    recipe = baseline_recipe(task.default_batch_size, task.default_lr)
    limit = p.max_train_seconds or task.max_train_seconds
    target = task.target if p.target is None else p.target
    runs = []
    for seed in range(p.seeds):
        limits = TrialLimits(max_train_seconds=limit,
                             eval_every_seconds=p.eval_every_seconds or task.eval_every_seconds,
                             target=target, higher_is_better=task.higher_is_better, seed=seed)
        r = run_trial(task, recipe, limits, device=ctx.device)
        runs.append(_run_row(seed, r))
    ttas = [r["tta_seconds"] for r in runs]
    return {
        "recipe": recipe.to_dict(), "model": dict(task.info), "target": target,
        "task_target": task.target, "limit_s": limit, "task_limit_s": task.max_train_seconds,
        "runs": runs,
        "median_tta_s": statistics.median(ttas) if None not in ttas else None,
        "steps_per_s": statistics.median(r["steps_per_s"] for r in runs),
        "examples_per_s": statistics.median(r["examples_per_s"] for r in runs),
        "calibration": calibration_note(ttas, [r["best_metric"] for r in runs], limit,
                                        p.eval_every_seconds or task.eval_every_seconds),
        "time_to": times_to_reach([r["curve"] for r in runs], target, task.higher_is_better),
    }


TARGET_SCALES = (0.9, 0.95, 1.0, 1.05)
"""Targets around the task's, for ``times_to_reach``: what a recalibration chooses among."""


def times_to_reach(curves: list[list[list[float]]], target: float, higher_is_better: bool
                   ) -> dict[str, list[float | None]]:
    """For targets around ``target`` (``TARGET_SCALES``), each seed's training seconds to the
    first evaluation that reached it (None: never), read off the metric curves."""
    out = {}
    for scale in TARGET_SCALES:
        level = round(target * scale if higher_is_better else target / scale, 4)
        out[f"{level:g}"] = [
            next((t for t, m in curve if (m >= level if higher_is_better else m <= level)), None)
            for curve in curves]
    return out


def _run_row(seed: int, r: TrialResult) -> dict[str, Any]:
    train = r.train_seconds or float("nan")
    return {
        "seed": seed, "status": r.status, "tta_seconds": r.tta_seconds,
        "best_metric": r.best_metric, "steps": r.steps, "train_seconds": r.train_seconds,
        "steps_per_s": r.steps / train if r.steps else 0.0,
        "examples_per_s": r.examples / train if r.examples else 0.0,
        "setup_seconds": r.setup_seconds, "eval_seconds": r.eval_seconds,
        "peak_memory_bytes": r.peak_memory_bytes, "message": r.message,
        "curve": [[round(t, 2), round(m, 4)] for t, m in r.curve],
    }


def calibration_note(ttas: list[float | None], best: list[float | None], limit: float,
                     eval_every: float) -> dict[str, Any]:
    """Whether a target and limit look sensible from the baseline's runs: every seed reaches
    the target, within half the limit (room for slower recipes and noise), and no sooner than
    5 evaluations in (else time-to-target is read too coarsely to rank recipes)."""
    reached = [t for t in ttas if t is not None]
    if len(reached) < len(ttas):
        return {"sensible": False,
                "why": f"{len(ttas) - len(reached)} of {len(ttas)} seeds missed the target "
                       f"within {limit:g} s (best metric per seed {best}): lower the target "
                       "or raise the limit (time_to and the curves show what was reached when)"}
    if max(reached) > limit / 2:
        return {"sensible": False,
                "why": f"the slowest seed took {max(reached):.1f} s, over half the "
                       f"{limit:g} s limit: raise the limit or lower the target"}
    if min(reached) < 5 * eval_every:
        return {"sensible": False,
                "why": f"the fastest seed reached the target after {min(reached):.1f} s, "
                       f"within 5 evaluations ({eval_every:g} s each): raise the target or "
                       "evaluate more often, so that time-to-target can rank recipes"}
    return {"sensible": True,
            "why": f"every seed reached the target in {min(reached):.1f}-{max(reached):.1f} s "
                   f"of the {limit:g} s limit"}


# -- part 2: a short real search ---------------------------------------------------------------


def part_search(ctx: Context) -> dict[str, Any]:
    """A short search under the 16 GB budget on Ray Tune; every launched trial's peak is
    checked against the budget."""
    p = ctx.profile
    warnings: list[str] = []
    request = SearchRequest(
        model="bert", task_options=dict(p.task_options), budget_bytes=BUDGET_BYTES,
        target=p.target, device=ctx.device, trials=p.search_trials,
        time_budget_s=ctx.time_for_search(),
        max_trial_seconds=p.search_trial_seconds, confirm_top=p.confirm_top,
        confirm_seeds=p.confirm_seeds, screen=p.screen, cpus_per_trial=p.cpus_per_trial, seed=0,
        results_dir=str(ctx.work / "search"))
    outcome = search(request, on_event=lambda kind, payload: warnings.append(str(payload))
                     if kind == "warning" else None)
    launched = [r for r in outcome.records if r.launched]
    peaks = [r.peak_memory_bytes for r in launched if r.peak_memory_bytes is not None]
    over = [r.trial for r in launched
            if r.peak_memory_bytes is not None and r.peak_memory_bytes > BUDGET_BYTES]
    summary = outcome.summary
    best = summary.best
    statuses: dict[str, int] = {}
    for r in outcome.records:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {
        "budget_bytes": BUDGET_BYTES, "trials": len(outcome.records), "launched": len(launched),
        "not_launched": len(outcome.records) - len(launched), "statuses": statuses,
        "winner": best.record.recipe if best else None,
        "winner_tta_s": best.tta_seconds if best else None,
        "baseline_tta_s": summary.baseline.tta_seconds if summary.baseline else None,
        "speedup": summary.speedup, "speedup_is_lower_bound": summary.speedup_is_lower_bound,
        "no_winner": outcome.no_winner, "max_peak_bytes": max(peaks, default=None),
        "max_reserved_bytes": max((r.peak_reserved_bytes for r in launched
                                   if r.peak_reserved_bytes is not None), default=None),
        "peak_sources": sorted({r.peak_memory_source for r in launched
                                if r.peak_memory_source}),
        "cap_fractions": sorted({r.memory_cap_fraction for r in launched
                                 if r.memory_cap_fraction is not None}),
        "measured_trials": len(peaks), "trials_over_budget": over,
        "all_within_budget": bool(peaks) and not over,
        "screened": _lines(outcome.run_dir / "screening.jsonl"),
        "search_wall_s": outcome.wall_seconds, "warnings": warnings[:10],
    }


def _lines(path: Path) -> int | None:
    """Records in a JSON-lines file of the run directory; None when the search wrote none."""
    return len(path.read_text().splitlines()) if path.is_file() else None


# -- part 3: predicted against measured memory ---------------------------------------------------


def part_memory(ctx: Context) -> dict[str, Any]:
    """``predict_peak`` (as each trial records it) against each short trial's measured peak."""
    task, p, dev = ctx.load(), ctx.profile, torch.device(ctx.device)
    rows = []
    for changes in p.memory_recipes:
        recipe = Recipe(lr=task.default_lr).replace(**changes)
        reason = unsupported_reason(recipe, dev.type)
        if reason:
            rows.append({"recipe": recipe.describe(), "changes": changes, "skipped": reason})
            continue
        before = _settle(dev)
        limits = TrialLimits(max_train_seconds=3600.0, eval_every_seconds=3600.0,
                             target=1e30 if task.higher_is_better else -1e30,
                             higher_is_better=task.higher_is_better, seed=0,
                             max_steps=p.memory_steps)
        r = run_trial(task, recipe, limits, device=ctx.device)
        row: dict[str, Any] = {
            "recipe": recipe.describe(), "changes": changes, "status": r.status,
            "predicted": r.predicted_peak_bytes, "measured": r.peak_memory_bytes,
            "source": r.peak_memory_source, "reserved": r.peak_reserved_bytes,
            "allocated_before": before, "message": r.message[:200]}
        if r.status in objective.FAILED_STATES or not r.predicted_peak_bytes \
                or r.peak_memory_bytes is None:
            row["skipped"] = f"trial {r.status}: {r.message[:200]}"
        else:
            row["error"] = r.peak_memory_bytes / r.predicted_peak_bytes - 1
            if r.peak_reserved_bytes is not None:
                row["reserved_error"] = r.peak_reserved_bytes / r.predicted_peak_bytes - 1
        rows.append(row)
    return {"rows": rows, **memory_summary(rows)}


def _settle(dev: torch.device) -> int | None:
    """Free what earlier trials left cached on a GPU; the bytes still allocated (what a
    trial's peak includes that is not its own), None on a CPU."""
    if dev.type != "cuda":
        return None
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    return int(torch.cuda.memory_allocated(dev))


def memory_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and worst |measured / predicted - 1| over the measured rows; the recipes that a
    budget check (predicted x (1 + safety margin)) would launch but that measured above it."""
    measured = [r for r in rows if "error" in r]
    errors = [abs(r["error"]) for r in measured]
    worst = max(measured, key=lambda r: abs(r["error"]), default=None)
    reserved = [abs(r["reserved_error"]) for r in measured if "reserved_error" in r]
    return {
        "measured": len(measured), "skipped": len(rows) - len(measured),
        "median_abs_error": statistics.median(errors) if errors else None,
        "worst_abs_error": max(errors) if errors else None,
        "worst_recipe": worst["recipe"] if worst else None,
        "median_abs_reserved_error": statistics.median(reserved) if reserved else None,
        "worst_abs_reserved_error": max(reserved) if reserved else None,
        "under_predicted_beyond_margin": [
            r["recipe"] for r in measured if r["error"] > SAFETY_MARGIN],
        "safety_margin": SAFETY_MARGIN,
    }


# -- part 4: model FLOP utilisation ---------------------------------------------------------------


def peak_flops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a GPU named ``device_name`` (``PEAK_BF16_FLOPS``); None for a
    CPU or an unknown chip."""
    if not device_name:
        return None
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in device_name.upper():
            return PEAK_BF16_FLOPS[key]
    return None


def part_mfu(ctx: Context) -> dict[str, Any]:
    """FLOPs of one real step of the winner (else the baseline) over its measured step time and
    the chip's peak; the ``compile`` default step time beside eager where measured."""
    task, p, dev = ctx.load(), ctx.profile, torch.device(ctx.device)
    recipe, which = _mfu_recipe(ctx, task)
    eager = time_steps(task, recipe.replace(compile="none"), dev, p.timing_steps,
                       count_flops=True)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    peak = peak_flops(name)
    achieved = eager["flops_per_step"] / eager["step_s"]
    out: dict[str, Any] = {
        "recipe": recipe.to_dict(), "which": which, "device_name": name or platform.processor(),
        "flops_per_step": eager["flops_per_step"], "step_ms": 1000 * eager["step_s"],
        "achieved_flops": achieved, "peak_bf16_flops": peak,
        "mfu": achieved / peak if peak else None,
        "mfu_note": None if peak else ("n/a: no dense bf16 peak known for this device "
                                       "(a CPU, or a GPU missing from PEAK_BF16_FLOPS)"),
    }
    if not p.compile:
        out["compile"] = {"skipped": f"profile {p.name} does not measure compile"}
    elif unsupported_reason(recipe.replace(compile="default"), dev.type):
        out["compile"] = {"skipped": unsupported_reason(recipe.replace(compile="default"),
                                                        dev.type)}
    else:
        compiled = time_steps(task, recipe.replace(compile="default"), dev, p.timing_steps)
        out["compile"] = {
            "mode": "default", "compile_s": compiled["compile_s"],
            "first_step_s": compiled["first_step_s"], "step_ms": 1000 * compiled["step_s"],
            "speedup": eager["step_s"] / compiled["step_s"],
            "mfu": achieved * eager["step_s"] / compiled["step_s"] / peak if peak else None}
    return out


def _mfu_recipe(ctx: Context, task: Task) -> tuple[Recipe, str]:
    """The search's winner when it ran one device, else the baseline, and which it is."""
    winner = ctx.results.get("search", {}).get("winner")
    if winner:
        recipe = Recipe.from_dict(winner)
        if recipe.workers == 1:
            return recipe, "winner"
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    if ctx.device == "cuda":  # MFU is against the bf16 peak: the fp32 baseline is low by design
        return base.replace(precision="bf16"), "baseline in bf16"
    return base, "baseline"


def time_steps(task: Task, recipe: Recipe, dev: torch.device, steps: int,
               count_flops: bool = False) -> dict[str, float]:
    """Train a fresh model with ``recipe`` for 2 warm-up steps and ``steps`` timed ones (the
    device synchronised at both ends); FLOPs of one more step when ``count_flops``."""
    seed_everything(0)
    model = task.build_model()
    model.train()
    batches = make_batches(task, recipe, 0, dev)
    forget_compiled()
    prepared = prepare(model, recipe, dev, task=task)
    batches.start()

    def step() -> None:  # as the trial loop steps: the loss left on the device, unread
        prepared.step(task, [batches.next() for _ in range(recipe.accumulation_steps)],
                      strict=False, lazy=True)

    try:
        compiling, start = compile_seconds(), time.perf_counter()
        step()
        _sync(dev)
        first = time.perf_counter() - start
        step()
        compiled = compile_seconds() - compiling
        _sync(dev)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(dev)
        out = {"step_s": (time.perf_counter() - start) / steps, "first_step_s": first,
               "compile_s": compiled}
        if count_flops:
            with FlopCounterMode(display=False) as counter:
                step()
            out["flops_per_step"] = float(counter.get_total_flops())
        return out
    finally:
        batches.close()


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# -- part 5: no host synchronisation per step ------------------------------------------------------


SYNC_RECIPES: tuple[dict[str, Any], ...] = (
    {},
    {"precision": "bf16"},
    {"precision": "bf16", "grad_clip": 1.0, "fused_optimizer": "fused"},
    {"precision": "fp16", "fused_optimizer": "fused"},
    {"precision": "bf16", "accumulation_steps": 2, "schedule": "cosine", "warmup_steps": 5},
)
"""Recipes whose steps must not synchronise: precision, clipping, fused optimizer, fp16's
scaler with a fused optimizer (the unfused one reads its inf check), accumulation, schedule."""


def part_sync(ctx: Context) -> dict[str, Any]:
    """Trials under ``AUTOTUNE_SYNC_DEBUG=error`` (on a GPU a synchronising call in a step
    after the first raises, and the trial ends as an error that names it), then the loop's
    throughput against a plain loop."""
    import os

    task, p = ctx.load(), ctx.profile
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    rows = []
    previous = os.environ.get(SYNC_DEBUG_ENV)
    os.environ[SYNC_DEBUG_ENV] = "error"
    try:
        for changes in SYNC_RECIPES:
            recipe = base.replace(**changes)
            reason = unsupported_reason(recipe, ctx.device)
            if reason:
                rows.append({"recipe": recipe.describe(), "skipped": reason})
                continue
            limits = TrialLimits(max_train_seconds=3600.0, eval_every_seconds=3600.0,
                                 target=1e30 if task.higher_is_better else -1e30,
                                 higher_is_better=task.higher_is_better, seed=0,
                                 max_steps=p.sync_steps)
            r = run_trial(task, recipe, limits, device=ctx.device)
            rows.append({"recipe": recipe.describe(), "status": r.status, "steps": r.steps,
                         "no_sync": r.status == objective.NOT_REACHED,
                         "message": r.message[:300]})
    finally:
        if previous is None:
            os.environ.pop(SYNC_DEBUG_ENV, None)
        else:
            os.environ[SYNC_DEBUG_ENV] = previous
    checked = [r for r in rows if "status" in r]
    throughput = throughput_rows(task, [base, base.replace(precision="bf16")],
                                 p.throughput_steps, p.throughput_reps, ctx.device)
    return {"debug_mode_checked": ctx.device == "cuda", "rows": rows,
            "all_without_sync": bool(checked) and all(r["no_sync"] for r in checked),
            "throughput": throughput,
            "min_throughput_ratio": min(r["ratio"] for r in throughput)}


# -- running, the table, the JSON ------------------------------------------------------------------


PART_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "baseline": part_baseline, "search": part_search, "memory": part_memory, "mfu": part_mfu,
    "sync": part_sync}


def run_part(name: str, fn: Callable[[Context], dict[str, Any]], ctx: Context) -> dict[str, Any]:
    """``fn(ctx)`` timed; an exception becomes ``ok: False`` with its error and the last lines
    of its traceback, so the next part still runs."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        result = {"ok": True, "error": None, **fn(ctx)}
    except BaseException as exc:  # noqa: BLE001 - a part's failure is a result, not the end
        if isinstance(exc, KeyboardInterrupt):
            raise
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500],
                  "traceback": traceback.format_exc().splitlines()[-12:]}
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["cpu_seconds"] = round(time.process_time() - cpu, 2)  # this process's, all threads
    return result


def environment(device: str) -> dict[str, Any]:
    """The machine and versions the numbers belong to."""
    env: dict[str, Any] = {"device": device, "torch": torch.__version__,
                           "python": platform.python_version(), "host": platform.node(),
                           "cpu_threads": torch.get_num_threads()}
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_memory_bytes=props.total_memory,
                   capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                   gpu_count=torch.cuda.device_count())
    for name in ("ray", "optuna", "deepspeed", "transformers", "pydantic", "sqlalchemy"):
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    return env


def import_probe(modules: tuple[str, ...] = PROBED_MODULES) -> dict[str, str]:
    """``ok`` or the error of importing each module: on a GPU machine, whether the carried
    wheels (``benchmarks/device_pack.py``) work with its own packages, before any part needs
    them (DeepSpeed is imported by no part on one GPU)."""
    out = {}
    for name in modules:
        try:
            importlib.import_module(name)
            out[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - recorded; the parts say what it costs
            out[name] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def run_check(device: str, profile: Profile, out: Path, parts: tuple[str, ...] = PARTS,
              work: Path | None = None, deadline_s: float | None = None) -> dict[str, Any]:
    """Run ``parts`` in order, writing ``out/gpu_check.json`` after each; returns the report.
    ``deadline_s``: the whole check's wall-clock seconds (see ``PART_MIN_SECONDS``)."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(device=device, profile=profile,
                  work=work or Path(tempfile.mkdtemp(prefix="gpu_check_")),
                  deadline=time.perf_counter() + deadline_s if deadline_s else None)
    report: dict[str, Any] = {"schema": SCHEMA, "started_at": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "profile": asdict(profile), "parts": {}}
    if device == "cuda":  # seconds for DeepSpeed: only where the pack is what is checked
        report["imports"] = import_probe()
        print(f"imports: {report['imports']}", flush=True)
    threads = torch.get_num_threads()
    try:
        if profile.threads:
            torch.set_num_threads(profile.threads)
        _run_parts(ctx, report, out, parts)
    finally:
        torch.set_num_threads(threads)
    table = render(report)
    (out / "gpu_check.md").write_text(table + "\n")
    print(table, flush=True)
    return report


def _run_parts(ctx: Context, report: dict[str, Any], out: Path, parts: tuple[str, ...]) -> None:
    """Each part in turn, ``gpu_check.json`` rewritten after each."""
    device = ctx.device
    start = time.perf_counter()
    for name in parts:
        print(f"== {name} ...", flush=True)
        if ctx.left() < PART_MIN_SECONDS[name]:
            ctx.results[name] = {"ok": False, "seconds": 0.0, "error": (
                f"skipped: {max(0.0, ctx.left()):.0f} s left of --deadline-s, under the "
                f"{PART_MIN_SECONDS[name]:.0f} s this part needs")}
        else:
            ctx.results[name] = run_part(name, PART_FUNCTIONS[name], ctx)
        if device == "cuda":
            torch.cuda.empty_cache()  # the next part (or the search's trials) starts clean
        report["parts"][name] = ctx.results[name]
        report["environment"] = environment(device)
        report["wall_seconds"] = round(time.perf_counter() - start, 2)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(render_part(name, ctx.results[name]), flush=True)


def _num(value: Any, fmt: str = ".3g", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def render_part(name: str, r: dict[str, Any]) -> str:
    """A few lines on one part's result."""
    if not r["ok"]:
        return f"{name}: FAILED after {r['seconds']} s: {r['error']}"
    if name == "baseline":
        lines = [f"baseline: BERT-{r['model'].get('size')} "
                 f"({r['model'].get('parameters', 0) / 1e6:.1f}M), target {r['target']}, "
                 f"limit {r['limit_s']:g} s"]
        lines += [f"  seed {x['seed']}: {x['status']:<12} tta {_num(x['tta_seconds'], '.1f', ' s')}"
                  f"  best {_num(x['best_metric'], '.4f')}  {x['steps']} steps "
                  f"({x['steps_per_s']:.1f}/s)" for x in r["runs"]]
        lines.append(f"  calibration: {r['calibration']['why']}")
        return "\n".join(lines)
    if name == "search":
        return (f"search: {r['trials']} trials ({r['launched']} launched), winner tta "
                f"{_num(r['winner_tta_s'], '.1f', ' s')}, speedup {_num(r['speedup'], '.2f', 'x')}"
                f", max peak {format_bytes(r['max_peak_bytes'])} of "
                f"{format_bytes(r['budget_bytes'])}: all within budget {r['all_within_budget']}")
    if name == "memory":
        lines = [f"  {x['recipe'][:48]:<48} predicted {format_bytes(x.get('predicted')):>11} "
                 f"measured {format_bytes(x.get('measured')):>11} "
                 + (f"{x['error']:+.1%}" if "error" in x else f"skipped: {x['skipped'][:60]}")
                 for x in r["rows"]]
        return "\n".join([f"memory: {r['measured']} recipes measured"] + lines)
    if name == "sync":
        lines = [f"  {x['recipe'][:56]:<56} " + (f"{x['status']} after {x['steps']} steps"
                 if "status" in x else f"skipped: {x['skipped'][:60]}") for x in r["rows"]]
        lines += [f"  throughput {x['recipe'][:44]:<44} {x['autotune_steps_per_s']:.1f} vs "
                  f"{x['plain_steps_per_s']:.1f} steps/s: {x['ratio']:.3f}"
                  for x in r["throughput"]]
        return "\n".join([f"sync: every step free of host syncs: {r['all_without_sync']} "
                          f"(checked by torch: {r['debug_mode_checked']})"] + lines)
    return (f"mfu: {r['which']} {_num(r['flops_per_step'], '.3g')} FLOP/step, "
            f"{r['step_ms']:.1f} ms/step, MFU {_num(r['mfu'], '.1%')}")


def render(report: dict[str, Any]) -> str:
    """The summary table: one row per part, its key numbers."""
    env = report.get("environment", {})
    lines = [f"GPU check, {report['started_at']}, {env.get('gpu') or env.get('device')}, "
             f"torch {env.get('torch')}, profile {report['profile']['name']}", "",
             "| part | ok | seconds | result |", "|---|---|---|---|"]
    for name, r in report["parts"].items():
        lines.append(f"| {name} | {'yes' if r['ok'] else 'NO'} | {r['seconds']} | "
                     f"{_summary(name, r)} |")
    return "\n".join(lines)


def _summary(name: str, r: dict[str, Any]) -> str:
    if not r["ok"]:
        return f"error: {r['error'][:120]}"
    if name == "baseline":
        return (f"median TTA {_num(r['median_tta_s'], '.1f', ' s')}, "
                f"{r['steps_per_s']:.1f} steps/s; {r['calibration']['why']}")
    if name == "search":
        return (f"winner TTA {_num(r['winner_tta_s'], '.1f', ' s')}, speedup "
                f"{_num(r['speedup'], '.2f', 'x')}, max peak {format_bytes(r['max_peak_bytes'])}"
                f" <= 16 GB: {r['all_within_budget']}")
    if name == "sync":
        return (f"steps without host sync: {r['all_without_sync']} "
                f"({'torch sync debug mode' if r['debug_mode_checked'] else 'not checkable here'});"
                f" throughput vs a plain loop: " + ", ".join(
                    f"{x['precision']} {x['ratio']:.3f}" for x in r["throughput"]))
    if name == "memory":
        return (f"{r['measured']} recipes: median |error| {_num(r['median_abs_error'], '.1%')}, "
                f"worst {_num(r['worst_abs_error'], '.1%')} ({r['worst_recipe']})")
    compiled = r.get("compile", {})
    return (f"{r['which']}: MFU {_num(r['mfu'], '.1%')} ({r['step_ms']:.1f} ms/step); compile: "
            + (f"{compiled['speedup']:.2f}x step, {compiled['compile_s']:.0f} s to compile"
               if "speedup" in compiled else compiled.get("skipped", "-")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--quick", action="store_true",
                        help="GPU: the ~8-minute profile (the CPU profile is always tiny)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, in order, from {', '.join(PARTS)}")
    parser.add_argument("--out", default="gpu_check_out", help="folder for the JSON and table")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="wall-clock seconds for the whole check: parts that would start "
                             "with too little left are skipped; the search gets what is left")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU visible", file=sys.stderr)
        return 2
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    profile = PROFILES["cpu" if device == "cpu" else ("gpu-quick" if args.quick else "gpu")]
    report = run_check(device, profile, Path(args.out), parts,
                       Path(args.work) if args.work else None, args.deadline_s)
    return 0 if all(r["ok"] for r in report["parts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
