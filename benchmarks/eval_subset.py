"""How a task's own metric read in pieces compares with its whole validation set, along a run.

Why: a trial's point of a task's own metric (``autotune.train.evaluation``) reads pieces of
the set until their spread says the metric is short of the target, and the whole set only
when they cannot say so; the rule is only worth its savings if it stops early far from the
target and never where the whole set has reached it. This trains the task's baseline (bf16 by
default) and, every ``--every`` steps, reads the whole set and then one point by the rule
(the trial's own ``Evaluator``, its pieces rotating as in a trial), printing both metrics,
the pieces read, the seconds of each, and at the end the share of a whole read the rule cost
and its errors (points called short whose whole set had reached the target)::

    .venv/bin/python -m benchmarks.eval_subset --task gpt --steps 400 --every 20
"""

from __future__ import annotations

import argparse
import time

import torch

from autotune import objective
from autotune.recipe import baseline_recipe
from autotune.tasks import evaluate_metric, load_task
from autotune.train.data import make_batches
from autotune.train.evaluation import Evaluator
from autotune.train.parallel import prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="gpt")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--target", type=float, default=None,
                        help="the target the rule decides against (default: the task's)")
    args = parser.parse_args(argv)
    cpu = torch.device("cpu")
    task = load_task(args.task, "cpu")
    if task.evaluate is None:
        parser.error(f"{args.task}: its metric is accuracy (pieces with a known variance)")
    target = task.target if args.target is None else args.target
    rule = Evaluator(task, target, task.higher_is_better)
    if not rule.metric_pieces:
        parser.error(f"{args.task}: {task.num_validation} examples are read whole")
    sizes = [p.num_validation for p in rule.metric_pieces]
    print(f"{args.task}: {task.num_validation} validation examples in {len(sizes)} pieces of "
          f"{min(sizes)}-{max(sizes)}, target {target}")
    recipe = baseline_recipe(task.default_batch_size, task.default_lr).replace(
        precision=args.precision)
    torch.manual_seed(0)
    model = task.build_model()
    model.train()
    prepared = prepare(model, recipe, cpu, task=task)
    batches = make_batches(task, recipe, 0, cpu)
    batches.start()
    whole_s = rule_s = 0.0
    points = short = errors = 0
    for step in range(1, args.steps + 1):
        prepared.step(task, [batches.next() for _ in range(recipe.accumulation_steps)],
                      strict=False)
        if step % args.every:
            continue
        model.eval()
        t0 = time.perf_counter()
        full = evaluate_metric(task, model, cpu)
        t1 = time.perf_counter()
        read, is_full = rule(model, cpu, final=False)
        t2 = time.perf_counter()
        model.train()
        whole_s += t1 - t0
        rule_s += t2 - t1
        points += 1
        reached = objective.reaches(full, target, task.higher_is_better)
        if not is_full:
            short += 1
            errors += reached
        verdict = "whole set" if is_full else "short" + (" (WRONG: reached)" if reached else "")
        print(f"step {step}: whole {full:.4f} ({t1 - t0:.2f} s); rule {read:.4f} {verdict} "
              f"({t2 - t1:.2f} s, {(read - full) / abs(target):+.2%} of the target)", flush=True)
    print(f"{points} points, {short} called short, {errors} of them wrongly; the rule cost "
          f"{rule_s:.1f} s against {whole_s:.1f} s reading the whole set "
          f"({rule_s / max(whole_s, 1e-9):.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
