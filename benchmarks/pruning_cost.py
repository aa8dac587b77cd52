"""What structured pruning (``prune_ratio``) saves per built-in task: parameters and the time of
one optimizer step at each ratio.

Why: ``prune_ratio`` is a speed knob only if the smaller layers it leaves make a step faster
(its cost, accuracy per step, is what a search weighs against that). This measures the step
through autotune's own code: the task's baseline recipe with ``prune_ratio`` changed and
nothing else, ``prepare`` (which prunes at step 0) and ``Prepared.step`` on the training
batches a trial takes. ``step_ms`` is the median of the timed steps after ``WARMUP_STEPS``,
best over ``--rounds`` rounds; each round measures every ratio once, one after another, so a
burst of load elsewhere on the machine hits one round of each ratio rather than one ratio.

Usage, from the repository root (2 threads, as on the 2-core reference machine)::

    .venv/bin/python -m benchmarks.pruning_cost                  # mnist, bert, gpt; ~3 min
    .venv/bin/python -m benchmarks.pruning_cost --tasks mnist --ratios 0 0.5 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from autotune.knobs import count_parameters
from autotune.recipe import baseline_recipe
from autotune.tasks import Task, load_task
from autotune.train.data import make_batches
from autotune.train.parallel import prepare

WARMUP_STEPS = 3
"""Steps left out of the median (allocator and kernel warm-up)."""


def measure(task: Task, ratio: float, steps: int) -> dict[str, float]:
    """``steps`` optimizer steps of the task's baseline recipe at ``prune_ratio`` = ``ratio``:
    the parameters left after ``prepare`` and the median step time."""
    recipe = baseline_recipe(task.default_batch_size, task.default_lr).replace(prune_ratio=ratio)
    torch.manual_seed(0)
    model = task.build_model()
    model.train()
    dev = torch.device("cpu")
    batches = make_batches(task, recipe, 0, dev)
    prepared = prepare(model, recipe, dev)
    batches.start()
    times = []
    for _ in range(steps):
        micro = [batches.next() for _ in range(recipe.accumulation_steps)]
        start = time.perf_counter()
        prepared.step(task, micro)
        times.append(time.perf_counter() - start)
    batches.close()
    return {"params": count_parameters(prepared.model),
            "step_ms": 1000 * statistics.median(times[WARMUP_STEPS:])}


def rows_for(name: str, ratios: list[float], rounds: int, steps: int) -> list[dict[str, object]]:
    """Every ratio, best step time of ``rounds`` rounds."""
    task = load_task(name)
    best: dict[float, dict[str, float]] = {}
    for _ in range(rounds):
        for ratio in ratios:
            got = measure(task, ratio, steps)
            if ratio not in best or got["step_ms"] < best[ratio]["step_ms"]:
                best[ratio] = got
    dense = best[ratios[0]]
    return [{"task": name, "prune_ratio": ratio, "params": best[ratio]["params"],
             "params_vs_dense": best[ratio]["params"] / dense["params"],
             "step_ms": best[ratio]["step_ms"],
             "speedup": dense["step_ms"] / best[ratio]["step_ms"]} for ratio in ratios]


def render(rows: list[dict[str, object]]) -> str:
    lines = ["| task | prune_ratio | parameters | of dense | step (median) | step speed-up |",
             "|" + "---|" * 6]
    for r in rows:
        lines.append(f"| {r['task']} | {r['prune_ratio']:g} | {r['params']:,} | "
                     f"{r['params_vs_dense']:.0%} | {r['step_ms']:.1f} ms | "
                     f"{r['speedup']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["bert", "gpt", "mnist"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.0, 0.25, 0.5],
                        help="the first is the reference the others are compared with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; torch "
          f"{torch.__version__}; {args.threads} threads; best of {args.rounds}", flush=True)
    rows = []
    for task in args.tasks:
        rows += rows_for(task, args.ratios, args.rounds, args.steps)
        for row in rows[-len(args.ratios):]:
            print(json.dumps(row), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(render(rows))


if __name__ == "__main__":
    main()
