"""Measure time-to-target (TTA) of the baseline and a few other recipes on the built-in tasks.

Why: each built-in task's target, baseline recipe (batch size, learning rate) and time limits
must be measured, not guessed. The baseline must reach the target for every seed, and at least one
other recipe must be clearly faster, so that a search has something to find. The results are
copied into the docstring of each task module (``autotune/tasks/bert.py``, ``mnist.py``,
``gpt.py``).

This is a plain torch loop on purpose, independent of ``autotune.train``: shuffle each epoch with
a seeded generator, AdamW (weight decay 0.01), optional linear warmup then a constant learning
rate, optional bf16 autocast, evaluate every ``task.eval_every_seconds`` of training time
(evaluation time is not counted), stop at the first evaluation that reaches ``task.target`` in
the metric's direction (accuracy up to it; ``gpt``'s validation loss down to it). The metric is
``autotune.tasks.evaluate_metric``, the one a trial measures.

Usage, from the repository root (one heavy process at a time; 2 threads, as on the 2-core
reference machine)::

    .venv/bin/python -m benchmarks.calibrate_tasks --task mnist
    .venv/bin/python -m benchmarks.calibrate_tasks --task bert --recipes baseline warmup50
    .venv/bin/python -m benchmarks.calibrate_tasks --task gpt --recipes baseline bf16 bs2x
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from autotune.tasks import Task, evaluate_metric, load_task


@dataclass(frozen=True)
class Recipe:
    """The knobs this script varies; the rest is fixed (AdamW, fp32 weights, one process)."""

    name: str
    batch_size: int
    lr: float
    warmup_steps: int = 0
    bf16: bool = False


@dataclass
class Run:
    """Outcome of one (recipe, seed) run."""

    tta: float | None
    steps: int
    best_metric: float | None
    evals: int


def recipes_for(task: Task) -> list[Recipe]:
    """The baseline (from the task's defaults) and the alternatives measured against it."""
    bs, lr = task.default_batch_size, task.default_lr
    return [
        Recipe("baseline", bs, lr),
        Recipe("warmup50", bs, lr, warmup_steps=50),
        Recipe("lr2x+warmup100", bs, 2 * lr, warmup_steps=100),
        Recipe("bs2x", 2 * bs, lr),
        Recipe("bs2x+lr2x+warmup50", 2 * bs, 2 * lr, warmup_steps=50),
        Recipe("bf16", bs, lr, bf16=True),
        Recipe("bf16+lr2x+warmup100", bs, 2 * lr, warmup_steps=100, bf16=True),
        Recipe("bf16+bs2x", 2 * bs, lr, bf16=True),
        Recipe("bf16+bs2x+lr2x+warmup50", 2 * bs, 2 * lr, warmup_steps=50, bf16=True),
    ]


def train_until_target(
    task: Task, recipe: Recipe, seed: int, max_seconds: float, verbose: bool = False
) -> Run:
    """Train one model with ``recipe`` until the target or ``max_seconds`` of training time;
    ``verbose`` prints every evaluation (training seconds, steps, metric)."""
    torch.manual_seed(seed)
    model = task.build_model()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    warmup = recipe.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    )
    gen = torch.Generator().manual_seed(seed)
    cpu = torch.device("cpu")
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if recipe.bf16 else nullcontext
    n = task.num_train
    clock, steps, evals, best = 0.0, 0, 0, None
    next_eval = task.eval_every_seconds
    while clock < max_seconds:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, recipe.batch_size):
            t0 = time.perf_counter()
            idx = perm[start : start + recipe.batch_size]
            batch = [t[idx] for t in task.train]
            with amp():
                loss = task.loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            clock += time.perf_counter() - t0
            steps += 1
            if not torch.isfinite(loss):
                return Run(None, steps, best, evals)
            if clock >= next_eval or clock >= max_seconds:
                metric = evaluate_metric(task, model, cpu)
                evals += 1
                if verbose:
                    print(f"  {recipe.name} seed {seed}: {clock:6.1f}s {steps:5d} steps "
                          f"{task.metric} {metric:.4f}", flush=True)
                best = metric if best is None else (
                    max(best, metric) if task.higher_is_better else min(best, metric)
                )
                if reaches(task, metric):
                    return Run(clock, steps, best, evals)
                next_eval = clock + task.eval_every_seconds
            if clock >= max_seconds:
                break
    return Run(None, steps, best, evals)


def reaches(task: Task, metric: float) -> bool:
    """Whether ``metric`` reaches the task's target in the metric's direction."""
    return metric >= task.target if task.higher_is_better else metric <= task.target


def fmt_run(run: Run) -> str:
    """Time-to-target, or ``-(best metric)`` for a run that never reached the target."""
    if run.tta is not None:
        return f"{run.tta:5.1f}s"
    return " -(nan)" if run.best_metric is None else f" -({run.best_metric:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist", help="bert, gpt, mnist, or package.module:fn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="*", help="names of the recipes to run (default all)")
    parser.add_argument(
        "--max-seconds", type=float, help="training time limit (default task.max_train_seconds)"
    )
    parser.add_argument("--target", type=float, help="override task.target (to try others)")
    parser.add_argument("--eval-every", type=float, help="override task.eval_every_seconds")
    parser.add_argument("--lr", type=float, help="override task.default_lr (baseline lr)")
    parser.add_argument("--batch-size", type=int, help="override task.default_batch_size")
    parser.add_argument("--verbose", action="store_true", help="print every evaluation")
    parser.add_argument(
        "--threads", type=int, default=2,
        help="torch threads (default 2; 1 on a shared, busy machine: 2 threads whose partner is "
        "descheduled wait at every elementwise op, measured 100x slower)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    overrides = {
        "target": args.target,
        "eval_every_seconds": args.eval_every,
        "default_lr": args.lr,
        "default_batch_size": args.batch_size,
    }
    task = dataclasses.replace(task, **{k: v for k, v in overrides.items() if v is not None})
    limit = args.max_seconds or task.max_train_seconds
    print(f"task {task.name}: {task.description}")
    print(
        f"{task.metric} target {task.target} "
        f"({'higher' if task.higher_is_better else 'lower'} is better), "
        f"baseline bs {task.default_batch_size} lr {task.default_lr}, "
        f"eval every {task.eval_every_seconds}s, limit {limit}s, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    header = f"{'recipe':24} {'bs':>4} {'lr':>7} {'wu':>4} {'bf16':>4}  "
    header += "  ".join(f"seed {s:<5}" for s in args.seeds) + "  median   reached"
    print(header)
    for recipe in recipes_for(task):
        if args.recipes and recipe.name not in args.recipes:
            continue
        runs = [train_until_target(task, recipe, seed, limit, args.verbose) for seed in args.seeds]
        ttas = [r.tta for r in runs if r.tta is not None]
        median = f"{statistics.median(ttas):5.1f}s" if len(ttas) == len(runs) else "   -  "
        print(
            f"{recipe.name:24} {recipe.batch_size:>4} {recipe.lr:>7.0e} {recipe.warmup_steps:>4} "
            f"{'y' if recipe.bf16 else 'n':>4}  "
            + "  ".join(f"{fmt_run(r):10}" for r in runs)
            + f"  {median}  {len(ttas)}/{len(runs)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
