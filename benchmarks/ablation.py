"""Ablation: what each speed lever is worth, alone, on each built-in task.

From a starting recipe (the task's baseline, or a search's winner with ``--from``), switch each
lever alone (on where the start has it off, back to the baseline's value where the start has
it on) and measure time-to-target (median over ``--seeds`` seeds) and the training step's time,
each through a real trial (``autotune.train.run_trial``, the function a search runs), with the
task's own limits. This is how a user learns what each lever is worth on their hardware, and
it tells us which levers belong in the default spaces.

A lever that cannot act here (a GPU-only knob on a CPU, DataLoader knobs on a task that holds
tensors, distillation on a task with no teacher) is listed as ``n/a`` with the reason, not run.
``compile`` is not in the CPU list: on a 2-core CPU one compile takes longer than a whole trial
(``benchmarks/compile_cost.py`` measures it); pass ``--levers compile`` to measure it anyway.

Columns: ``tta_s`` median time-to-target over the seeds that reached the target (``-`` when
fewer than half did), ``reached`` seeds that reached it, ``x start`` the start's median TTA over
this one's (> 1 is faster), ``step_ms`` median training seconds per optimizer step, ``ex/s``
training examples per second, both over the seeds' whole runs (so a lever that changes the
batch or accumulation shows in ``ex/s``, not ``step_ms``).

Usage, from the repository root::

    .venv/bin/python -m benchmarks.ablation --tasks mnist bert gpt          # ~35 min on 2 cores
    .venv/bin/python -m benchmarks.ablation --tasks bert --from autotune_runs/<run>/best_recipe.yaml
    .venv/bin/python -m benchmarks.ablation --tasks mnist --seeds 1 --levers bf16 clip1

The table is printed as it fills; ``--json PATH`` also writes every trial's measurements.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autotune import objective
from autotune.errors import ConfigError
from autotune.recipe import Recipe, baseline_recipe
from autotune.tasks import Task, load_task
from autotune.train import TrialLimits, run_trial
from autotune.warm_start import LR_BATCH_EXPONENT

Change = dict[str, Any] | str
"""A lever's changes to the start recipe, or the reason it cannot act here."""


@dataclass(frozen=True)
class Lever:
    """One speed lever: its name, and what switching it on changes (given the task, the
    start recipe and the device), or why it cannot act."""

    name: str
    key: str
    """The knob that says whether a recipe has the lever on (it differs from the baseline)."""
    on: Callable[[Task, Recipe, str], Change]
    gpu_only: bool = False


def _bigger_batch(task: Task, r: Recipe, device: str) -> Change:
    exponent = LR_BATCH_EXPONENT.get(r.optimizer, 0.5)
    return {"batch_size": r.batch_size * 2, "lr": r.lr * 2**exponent,
            "warmup_steps": max(r.warmup_steps, 100)}


def _distill(task: Task, r: Recipe, device: str) -> Change:
    if getattr(task, "teacher", None) is None:
        return "the task has no teacher"
    return {"distill_weight": 0.5}


def _loader(task: Task, r: Recipe, device: str) -> Change:
    if not task.is_dataset:
        return "the task's data are tensors, sliced on the device: no DataLoader"
    return {"dataloader_workers": 1}


def _data_parallel(mode: str) -> Callable[[Task, Recipe, str], Change]:
    def on(task: Task, r: Recipe, device: str) -> Change:
        if r.batch_size % 2:
            return "odd batch size"
        # Two workers at half the batch each: the same examples per step, so only the
        # parallelism changes.
        return {"parallelism": mode, "workers": 2, "batch_size": r.batch_size // 2}
    return on


def _pipeline(task: Task, r: Recipe, device: str) -> Change:
    return {"parallelism": "pipeline", "workers": 2, "pipeline_microbatches": 2}


LEVERS: tuple[Lever, ...] = (
    Lever("bf16", "precision", lambda t, r, d: {"precision": "bf16"}),
    Lever("batch2x", "batch_size", _bigger_batch),
    Lever("accum2", "accumulation_steps", lambda t, r, d: {"accumulation_steps": 2}),
    Lever("warmup100", "warmup_steps", lambda t, r, d: {"warmup_steps": 100}),
    Lever("cosine", "schedule", lambda t, r, d: {"schedule": "cosine"}),
    Lever("clip1", "grad_clip", lambda t, r, d: {"grad_clip": 1.0}),
    Lever("fused", "fused_optimizer", lambda t, r, d: {"fused_optimizer": "fused"}),
    Lever("ckpt", "checkpointing", lambda t, r, d: {"checkpointing": True}),
    Lever("prune0.25", "prune_ratio", lambda t, r, d: {"prune_ratio": 0.25}),
    Lever("sparsity0.3", "weight_sparsity", lambda t, r, d: {"weight_sparsity": 0.3}),
    Lever("distill0.5", "distill_weight", _distill),
    Lever("loader1", "dataloader_workers", _loader),
    Lever("ddp2", "parallelism", _data_parallel("ddp")),
    Lever("fsdp2", "parallelism", _data_parallel("fsdp")),
    Lever("pipeline2", "parallelism", _pipeline),
    Lever("tf32", "tf32", lambda t, r, d: {"tf32": True}, gpu_only=True),
    Lever("channels_last", "channels_last", lambda t, r, d: {"channels_last": True}),
    Lever("compile", "compile", lambda t, r, d: {"compile": "default"}),
)
CPU_SKIPS = {"compile"}
"""Left out of the default list on a CPU (see the module docstring); ``--levers`` runs them."""


def variant(lever: Lever, task: Task, start: Recipe, device: str) -> tuple[Recipe | None, str]:
    """The start recipe with ``lever`` switched, and ``on``/``off``: on where the start has the
    lever's knob at the baseline's value, else off (the knobs the lever sets back to the
    baseline's values; a batch switched back rescales the learning rate by the same rule).
    ``None`` and the reason when it cannot act here."""
    if lever.gpu_only and device != "cuda":
        return None, "GPU only (no such hardware path on a CPU)"
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    if getattr(start, lever.key) == getattr(base, lever.key):
        label, changes = "on", lever.on(task, start, device)
    else:
        probe = lever.on(task, base, device)
        if isinstance(probe, str):
            return None, probe
        label, changes = "off", {k: getattr(base, k) for k in probe}
        if lever.key == "batch_size":
            exponent = LR_BATCH_EXPONENT.get(start.optimizer, 0.5)
            changes["lr"] = start.lr * (base.batch_size / start.batch_size) ** exponent
            changes["warmup_steps"] = start.warmup_steps
    if isinstance(changes, str):
        return None, changes
    try:
        return start.replace(**changes), label
    except ConfigError as exc:
        return None, f"invalid with the start recipe: {exc}"


def measure(task: Task, recipe: Recipe, seeds: int, device: str) -> dict[str, Any]:
    """Real trials of ``recipe`` over ``seeds`` seeds: time-to-target and step time."""
    runs = []
    for seed in range(seeds):
        limits = TrialLimits.for_task(task, seed=seed)
        result = run_trial(task, recipe, limits, device=device)
        runs.append({"seed": seed, "status": result.status, "tta_s": result.tta_seconds,
                     "train_s": result.train_seconds, "steps": result.steps,
                     "examples": result.examples, "compile_s": result.compile_seconds,
                     "message": result.message, "inactive": result.inactive_knobs})
    reached = [r["tta_s"] for r in runs if r["status"] == objective.REACHED]
    trained = [r for r in runs if r["steps"]]
    return {
        "runs": runs,
        "reached": len(reached),
        "tta_s": statistics.median(reached) if len(reached) * 2 > seeds else None,
        "step_ms": statistics.median(1000 * r["train_s"] / r["steps"] for r in trained)
        if trained else None,
        "examples_per_s": statistics.median(r["examples"] / r["train_s"] for r in trained
                                            if r["train_s"]) if trained else None,
        "failed": sorted({r["status"] for r in runs} & set(objective.FAILED_STATES)),
    }


def _fmt(value: float | None, spec: str) -> str:
    """``value`` in ``spec``; ``-`` as wide as the spec when there is none."""
    if value is None or not math.isfinite(value):
        width = spec.split(".")[0]
        return "-".rjust(int(width) if width.isdigit() else 1)
    return format(value, spec)


def row(task: str, lever: str, label: str, m: dict[str, Any] | None, start_tta: float | None,
        seeds: int, note: str = "") -> str:
    """One line of the table."""
    if m is None:
        return f"{task:<8} {lever:<14} {'n/a':<4} {'':>7} {'':>7} {'':>8} {'':>8} {'':>7}  {note}"
    speed = start_tta / m["tta_s"] if start_tta and m["tta_s"] else None
    failed = f"  ({', '.join(m['failed'])})" if m["failed"] else ""
    return (f"{task:<8} {lever:<14} {label:<4} {_fmt(m['tta_s'], '7.1f')} "
            f"{m['reached']:>3}/{seeds:<3} {_fmt(speed, '8.2f')} {_fmt(m['step_ms'], '8.1f')} "
            f"{_fmt(m['examples_per_s'], '7.0f')}  {note}{failed}")


HEADER = (f"{'task':<8} {'lever':<14} {'':<4} {'tta_s':>7} {'reached':>7} {'x start':>8} "
          f"{'step_ms':>8} {'ex/s':>7}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["mnist", "bert", "gpt"])
    parser.add_argument("--from", dest="start", type=Path, default=None,
                        help="start from this recipe (a best_recipe.yaml) instead of the "
                             "baseline; with one task")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--levers", nargs="+", default=None,
                        help=f"levers to switch (default: all but {', '.join(CPU_SKIPS)} on a "
                             f"CPU): {', '.join(lv.name for lv in LEVERS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.start is not None and len(args.tasks) != 1:
        parser.error("--from applies to one task: name it alone with --tasks")
    names = args.levers or [lv.name for lv in LEVERS
                            if args.device == "cuda" or lv.name not in CPU_SKIPS]
    unknown = set(names) - {lv.name for lv in LEVERS}
    if unknown:
        parser.error(f"unknown levers {sorted(unknown)}; known: "
                     f"{', '.join(lv.name for lv in LEVERS)}")
    levers = [lv for lv in LEVERS if lv.name in names]
    began = time.time()
    out: dict[str, Any] = {"device": args.device, "seeds": args.seeds,
                           "threads": torch.get_num_threads(), "tasks": {}}
    print(HEADER, flush=True)
    for name in args.tasks:
        task = load_task(name, device=args.device)
        start = Recipe.load(args.start) if args.start else baseline_recipe(
            task.default_batch_size, task.default_lr)
        start_m = measure(task, start, args.seeds, args.device)
        rows = {"start": {"recipe": start.to_dict(), **start_m}}
        print(row(name, "start" if args.start else "baseline", "", start_m, start_m["tta_s"],
                  args.seeds, start.describe()), flush=True)
        for lever in levers:
            recipe, label = variant(lever, task, start, args.device)
            if recipe is None:
                rows[lever.name] = {"n/a": label}
                print(row(name, lever.name, "", None, None, args.seeds, label), flush=True)
                continue
            m = measure(task, recipe, args.seeds, args.device)
            rows[lever.name] = {"switched": label, "recipe": recipe.to_dict(), **m}
            print(row(name, lever.name, label, m, start_m["tta_s"], args.seeds), flush=True)
        out["tasks"][name] = rows
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    print(f"\n{len(args.tasks)} task(s), {args.seeds} seed(s) each, "
          f"{time.time() - began:.0f} s on {args.device} ({torch.get_num_threads()} threads)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
