"""How far a task's quick evaluation subset reads from its whole validation set, along a run.

Why: a trial far from its target reads a fixed subset of a task's own metric
(``autotune.train.evaluation``: a quarter of the set, at least ``MIN_QUICK`` examples) and
the whole set only within ``CUSTOM_MARGIN`` of the target; the subset can only miss a
crossing while its metric is more than that margin off the whole set's. ``--size`` measures a
subset the rule does not take (``gpt``'s 256 blocks are read whole: a quarter by default).
This trains the task's baseline (bf16 by default) and, every ``--every`` steps, reads both,
printing the difference as a share of the target and the seconds of each read::

    .venv/bin/python -m benchmarks.eval_subset --task gpt --steps 400 --every 20
"""

from __future__ import annotations

import argparse
import time

import torch

from autotune.recipe import baseline_recipe
from autotune.tasks import evaluate_metric, load_task
from autotune.train.data import make_batches
from autotune.train.evaluation import (
    CUSTOM_MARGIN,
    QUICK_FRACTION,
    quick_size,
    validation_subset,
)
from autotune.train.parallel import prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="gpt")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--size", type=int, default=None, help="the subset's examples "
                        "(default: the trial's quick subset, else a quarter of the set)")
    args = parser.parse_args(argv)
    cpu = torch.device("cpu")
    task = load_task(args.task, "cpu")
    size = args.size or quick_size(task.num_validation) or task.num_validation // QUICK_FRACTION
    if task.evaluate is None:
        parser.error(f"{args.task}: accuracy is read in pieces, not from a subset")
    subset = validation_subset(task, size)
    print(f"{args.task}: {task.num_validation} validation examples, subset {size}, "
          f"target {task.target}, margin {CUSTOM_MARGIN:.0%}")
    recipe = baseline_recipe(task.default_batch_size, task.default_lr).replace(
        precision=args.precision)
    torch.manual_seed(0)
    model = task.build_model()
    model.train()
    prepared = prepare(model, recipe, cpu, task=task)
    batches = make_batches(task, recipe, 0, cpu)
    batches.start()
    worst = 0.0
    for step in range(1, args.steps + 1):
        prepared.step(task, [batches.next() for _ in range(recipe.accumulation_steps)],
                      strict=False)
        if step % args.every:
            continue
        model.eval()
        t0 = time.perf_counter()
        full = evaluate_metric(task, model, cpu)
        t1 = time.perf_counter()
        quick = evaluate_metric(subset, model, cpu)
        t2 = time.perf_counter()
        model.train()
        worst = max(worst, abs(quick - full))
        print(f"step {step}: whole {full:.4f} ({t1 - t0:.2f} s), subset {quick:.4f} "
              f"({t2 - t1:.2f} s), {(quick - full) / abs(task.target):+.2%} of the target",
              flush=True)
    print(f"largest difference {worst:.4f} = {worst / abs(task.target):.2%} of the target "
          f"(margin {CUSTOM_MARGIN:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
