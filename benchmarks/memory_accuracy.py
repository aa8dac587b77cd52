"""How accurate is the memory estimator? Predicted against measured peaks, recipe by recipe.

For each recipe of the built-in tasks (``bert``, ``mnist``; precision, batch size, optimizer,
checkpointing, accumulation, pruning, and parallel modes with 2 workers), this script predicts
the peak memory of one device (``autotune.memory.predict_peak``) and measures it for real:

- on the CPU (``--device cpu``): the peak of tracked tensor memory of two optimizer steps on
  the task's largest micro-batch (``autotune.train.measure_step_memory``, the
  measurement every trial records), live on real tensors; parallel recipes run one gloo
  process per worker, and the busiest worker's peak is taken;
- on a GPU (``--device cuda``): ``torch.cuda.max_memory_allocated`` over the same two steps
  (parallel recipes need as many GPUs as workers, NCCL; they are skipped otherwise).

It prints each recipe's relative error (measured / predicted - 1), the median and worst
absolute error, and whether any recipe predicted to fit a budget (``check_budget``, with its
safety margin) measured above it; and writes everything to a JSON file. Not a test: it takes
a few minutes. From the repository root::

    .venv/bin/python -m benchmarks.memory_accuracy                 # CPU, ~3 minutes on 2 cores
    .venv/bin/python -m benchmarks.memory_accuracy --device cuda   # one GPU call
    .venv/bin/python -m benchmarks.memory_accuracy --only bert --no-parallel
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from autotune.knobs import unsupported_reason, weight_bytes
from autotune.memory import SAFETY_MARGIN, check_budget
from autotune.memory._model_states import deepspeed_setting
from autotune.recipe import ZERO_MODES, Recipe
from autotune.tasks import load_task
from autotune.train import measure_step_memory
from autotune.train.parallel import init_worker
from autotune.units import format_bytes

TARGET_MEDIAN = 0.05
TARGET_WORST = 0.15

RECIPES: list[tuple[str, dict[str, Any]]] = [
    # bert (BERT-tiny on a CPU, BERT-base on a GPU), one device
    ("bert", {"batch_size": 32}),
    ("bert", {"batch_size": 32, "precision": "bf16"}),
    ("bert", {"batch_size": 32, "precision": "fp16"}),
    ("bert", {"batch_size": 64}),
    ("bert", {"batch_size": 128, "precision": "bf16"}),
    ("bert", {"batch_size": 32, "optimizer": "sgd"}),
    ("bert", {"batch_size": 16, "optimizer": "adam"}),
    ("bert", {"batch_size": 128, "checkpointing": True}),
    ("bert", {"batch_size": 128, "precision": "bf16", "checkpointing": True}),
    ("bert", {"batch_size": 32, "accumulation_steps": 2}),
    ("bert", {"batch_size": 64, "prune_ratio": 0.3}),
    ("bert", {"batch_size": 64, "precision": "fp16", "optimizer": "sgd", "checkpointing": True}),
    # mnist (small CNN), one device
    ("mnist", {"batch_size": 32}),
    ("mnist", {"batch_size": 256, "precision": "bf16"}),
    ("mnist", {"batch_size": 128, "precision": "fp16", "optimizer": "sgd"}),
    ("mnist", {"batch_size": 64, "optimizer": "adam", "accumulation_steps": 4}),
    ("mnist", {"batch_size": 128, "prune_ratio": 0.5}),
    ("mnist", {"batch_size": 16, "optimizer": "sgd", "momentum": 0.0}),
    ("mnist", {"batch_size": 64, "precision": "bf16", "checkpointing": True}),
    # parallel modes, 2 workers
    ("bert", {"batch_size": 32, "parallelism": "ddp", "workers": 2}),
    ("bert", {"batch_size": 32, "parallelism": "ddp", "workers": 2, "precision": "bf16",
              "accumulation_steps": 2}),
    ("bert", {"batch_size": 32, "parallelism": "fsdp", "workers": 2}),
    ("bert", {"batch_size": 64, "parallelism": "fsdp", "workers": 2, "precision": "bf16",
              "checkpointing": True}),
    ("bert", {"batch_size": 32, "parallelism": "zero1", "workers": 2, "precision": "bf16"}),
    ("bert", {"batch_size": 32, "parallelism": "zero2", "workers": 2, "optimizer": "sgd",
              "lr": 0.05}),
    ("bert", {"batch_size": 32, "parallelism": "zero3", "workers": 2, "precision": "bf16"}),
    ("mnist", {"batch_size": 64, "parallelism": "ddp", "workers": 2}),
]
"""(task, changes to the baseline recipe)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(task_name: str, recipe: Recipe, device: str) -> int:
    """The measured peak of one device (the busiest worker) for ``recipe``."""
    if recipe.workers == 1:
        return _measure_here(load_task(task_name, device), recipe, device)
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"memory_accuracy_{os.getpid()}.json"
    mp.spawn(_worker, args=(recipe.workers, _free_port(), task_name, recipe.to_dict(), device,
                            str(out)), nprocs=recipe.workers, join=True)
    peaks = json.loads(out.read_text())
    out.unlink()
    return max(peaks)


def _measure_here(task: Any, recipe: Recipe, device: str) -> int:
    """One process's peak: tracked tensor memory on the CPU, the allocator's peak on a GPU."""
    dev = torch.device(device if device == "cpu" else f"cuda:{torch.cuda.current_device()}")
    if dev.type == "cpu":
        phases = measure_step_memory(task, recipe, dev, seed=0)
        return max(p["total"] for p in phases.values())
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    measure_step_memory(task, recipe, dev, seed=0)  # its tracker allocates nothing on a GPU
    return int(torch.cuda.max_memory_allocated(dev) - base)


def _worker(rank: int, world: int, port: int, task_name: str, recipe_dict: dict, device: str,
            out: str) -> None:
    warnings.filterwarnings("ignore")
    if device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_worker(rank, world, "127.0.0.1", port, device)
    try:
        peak = _measure_here(load_task(task_name, device), Recipe.from_dict(recipe_dict), device)
        peaks: list[Any] = [None] * world
        dist.all_gather_object(peaks, peak)
        if rank == 0:
            Path(out).write_text(json.dumps(peaks))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run(device: str, only: str | None, parallel: bool) -> list[dict[str, Any]]:
    """Predict and measure every selected recipe; one row per recipe."""
    tasks: dict[str, Any] = {}
    rows = []
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    for task_name, changes in RECIPES:
        if only and task_name != only:
            continue
        recipe = Recipe().replace(**changes)
        if recipe.workers > 1 and (not parallel or (device == "cuda" and gpus < recipe.workers)):
            continue
        if unsupported_reason(recipe, device):
            continue
        task = tasks.setdefault(task_name, load_task(task_name, device))
        start = time.perf_counter()
        _, prediction = check_budget(task, recipe, None, device)
        predict_s = time.perf_counter() - start
        start = time.perf_counter()
        measured = measure(task_name, recipe, device)
        fixed = _deepspeed_bucket(recipe)
        rows.append({
            "task": task_name, "recipe": recipe.describe(), "changes": changes,
            "predicted": prediction.peak_bytes, "measured": measured,
            "error": measured / prediction.peak_bytes - 1,
            "deepspeed_bucket": fixed,
            "error_without_bucket": (measured - fixed) / (prediction.peak_bytes - fixed) - 1,
            "phase": prediction.phase, "method": prediction.method,
            "predict_seconds": round(predict_s, 2),
            "measure_seconds": round(time.perf_counter() - start, 2),
        })
        print(_row(rows[-1]), flush=True)
    return rows


def _deepspeed_bucket(recipe: Recipe) -> int:
    """DeepSpeed's gradient bucket in a ZeRO recipe's peak (0 otherwise): a fixed
    ``reduce_bucket_size`` elements, whatever the model's size, which dwarfs a small model's
    own memory; the error of the rest is reported beside the total's."""
    if recipe.parallelism not in ZERO_MODES:
        return 0
    buffers = 2 if recipe.parallelism != "zero3" and deepspeed_setting(recipe, "overlap_comm") \
        else 1
    return int(deepspeed_setting(recipe, "reduce_bucket_size")) * weight_bytes(recipe) * buffers


def _row(r: dict[str, Any]) -> str:
    return (f"{r['task']:<6} {r['recipe'][:62]:<62} {format_bytes(r['predicted']):>11} "
            f"{format_bytes(r['measured']):>11} {r['error']:>+8.2%}  {r['phase']}")


def budget_check(rows: list[dict[str, Any]], margin: float) -> dict[str, Any]:
    """Recipes that a budget check with ``margin`` would launch (predicted peak x (1 +
    margin) within the budget) but that measure above it, for the worst budget: the one
    just below each recipe's measured peak."""
    violations = [r for r in rows if r["predicted"] * (1 + margin) < r["measured"]]
    budgets = sorted({2 ** k for k in range(20, 36)})
    per_budget = []
    for budget in budgets:
        fit = [r for r in rows if r["predicted"] * (1 + margin) <= budget]
        over = [r for r in fit if r["measured"] > budget]
        if fit and len(fit) < len(rows):
            per_budget.append({"budget": budget, "predicted_to_fit": len(fit),
                               "measured_over": len(over)})
    return {"margin": margin, "violations": [v["recipe"] for v in violations],
            "per_budget": per_budget}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--only", choices=["bert", "mnist"], default=None,
                        help="one task's recipes only")
    parser.add_argument("--no-parallel", action="store_true", help="skip 2-worker recipes")
    parser.add_argument("--output", default=None,
                        help="JSON file (default: memory_accuracy_<device>.json here)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU visible", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    print(f"{'task':<6} {'recipe':<62} {'predicted':>11} {'measured':>11} {'error':>8}  "
          "peak phase")
    rows = run(args.device, args.only, not args.no_parallel)
    errors = [abs(r["error"]) for r in rows]
    median, worst = statistics.median(errors), max(errors)
    budget = budget_check(rows, SAFETY_MARGIN)
    print(f"\n{len(rows)} recipes on {args.device}: median |error| {median:.2%} (target <= "
          f"{TARGET_MEDIAN:.0%}), worst {worst:.2%} (target <= {TARGET_WORST:.0%})")
    for r in rows:
        if r["deepspeed_bucket"]:
            print(f"  {r['recipe']}: without DeepSpeed's {format_bytes(r['deepspeed_bucket'])} "
                  f"gradient bucket, error {r['error_without_bucket']:+.2%}")
    print(f"budget check (predicted x {1 + SAFETY_MARGIN:g} <= budget): "
          f"{len(budget['violations'])} recipe(s) predicted to fit measured above the budget"
          + (f": {budget['violations']}" if budget["violations"] else ""))
    for b in budget["per_budget"]:
        print(f"  budget {format_bytes(b['budget']):>10}: {b['predicted_to_fit']:>2} predicted "
              f"to fit, {b['measured_over']} of them measured over")
    output = Path(args.output or f"memory_accuracy_{args.device}.json")
    output.write_text(json.dumps({
        "device": args.device, "torch": torch.__version__, "rows": rows,
        "median_abs_error": median, "worst_abs_error": worst, "budget_check": budget,
        "targets": {"median": TARGET_MEDIAN, "worst": TARGET_WORST},
    }, indent=2) + "\n")
    print(f"wrote {output}")
    ok = median <= TARGET_MEDIAN and worst <= TARGET_WORST and not budget["violations"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
