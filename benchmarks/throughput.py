"""Step throughput of autotune's trial loop against a plain hand-written loop.

Why: the time-to-target a search measures is only the user's if autotune's loop trains as
fast as the loop a user would write; issue 13 asks for at least 0.98 of a plain loop, fp32 and
bf16, and on GPUs no host synchronisation per step (``autotune.train.loop``). Both loops here
train the same model from the same seed on the same data order with the recipe's batch,
autocast and AdamW, on the same device; the plain one reads nothing back per step, and the
device is synchronised only at both ends of the timed steps. autotune's side is a real trial
(``run_trial`` with ``max_steps``), its steps per second of training time.

    .venv/bin/python -m benchmarks.throughput                       # bert, this CPU, ~5 min
    .venv/bin/python -m benchmarks.throughput --part step           # the step alone, ~2 min
    python3 -m benchmarks.throughput --device cuda --steps 200      # on a GPU

``--part step`` isolates the step: in one process, on one list of batches drawn as a trial
draws them, blocks of ``Prepared.step`` (the step every trial takes: lazy loss, LR scheduler,
accumulation's division) and of the plain step alternate, each on its own copy of one
seeded model, so the host's drift falls on both; the ratio is of the medians of the blocks.

(``benchmarks/search_quality.py`` and the GPU check's ``sync`` part use the same functions.)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Iterable
from typing import Any

import torch

from autotune.recipe import Recipe, baseline_recipe
from autotune.tasks import Task, load_task, move_batch
from autotune.train import TrialLimits, run_trial

WARMUP_STEPS = 2
"""Untimed steps of the plain loop first, on a copy of its model: a trial's clock starts after
its two memory-measured steps on a fresh copy (``measure_step_memory``), which have run every
kernel and filled the allocator once; without these the plain loop alone would pay that."""


def plain_loop_seconds(task: Task, recipe: Recipe, steps: int, seed: int,
                       device: str = "cpu", warmup: int = WARMUP_STEPS) -> float:
    """Seconds for ``steps`` optimizer steps of a hand-written loop: same model, data order
    (shuffled per epoch by a seeded generator), autocast, AdamW and batch as the recipe, on
    ``device`` (the data moved there first; a GPU synchronised before and after), after
    ``warmup`` untimed steps on a copy of the model."""
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = task.build_model().to(dev)
    model.train()
    data = move_batch(task.train, dev)
    spare = copy.deepcopy(model)
    spare_opt = _adamw(spare, recipe)
    for i in range(warmup):
        _plain_step(task, recipe, spare, spare_opt,
                    [[t[i * recipe.batch_size:(i + 1) * recipe.batch_size] for t in data]])
    del spare, spare_opt
    opt = _adamw(model, recipe)
    gen = torch.Generator().manual_seed(seed)
    n = data[0].shape[0]
    order = torch.randperm(n, generator=gen).to(dev)
    pos = 0
    _sync(dev)
    start = time.perf_counter()
    for _ in range(steps):
        if pos + recipe.batch_size > order.numel():
            order, pos = torch.randperm(n, generator=gen).to(dev), 0
        idx = order[pos: pos + recipe.batch_size]
        pos += recipe.batch_size
        _plain_step(task, recipe, model, opt, [[t.index_select(0, idx) for t in data]])
    _sync(dev)
    return time.perf_counter() - start


def autotune_seconds(task: Task, recipe: Recipe, steps: int, seed: int,
                     device: str = "cpu") -> float:
    """Training seconds of a real trial of ``steps`` optimizer steps (one evaluation, at the
    end, off the clock)."""
    limits = TrialLimits(max_train_seconds=1e9, eval_every_seconds=1e9,
                         target=2.0 if task.higher_is_better else -1.0,
                         higher_is_better=task.higher_is_better, seed=seed, max_steps=steps)
    result = run_trial(task, recipe, limits, device=device)
    if not result.train_seconds or result.steps != steps:
        raise RuntimeError(f"trial ended {result.status} after {result.steps} steps: "
                           f"{result.message}")
    return result.train_seconds


def throughput_rows(task: Task, recipes: Iterable[Recipe], steps: int, reps: int = 3,
                    device: str = "cpu") -> list[dict[str, Any]]:
    """For each recipe, ``reps`` pairs of runs of ``steps`` steps (a trial and the plain
    loop, from the same seed: the same model and batches), the order alternating (trial
    first, then plain first), and their pooled steps per second (all steps over all
    seconds), the ratio (autotune / plain; 1.0 is no overhead) and each pair's ratio.

    Why pairs of short runs: on a shared or throttling host the speed drifts by more than the
    2% the goal is about (consecutive 10-s runs of one bf16 loop on this CPU: 15.4-18.3
    steps/s); interleaved short runs put the drift on both loops alike."""
    rows = []
    for recipe in recipes:
        seconds = {"ours": 0.0, "plain": 0.0}
        pairs = []
        for rep in range(reps):
            pair = {}
            for side in (("ours", "plain") if rep % 2 == 0 else ("plain", "ours")):
                pair[side] = (autotune_seconds(task, recipe, steps, rep, device)
                              if side == "ours" else
                              plain_loop_seconds(task, recipe, steps, rep, device))
                seconds[side] += pair[side]
            pairs.append(pair["plain"] / pair["ours"])
        row: dict[str, Any] = {"recipe": recipe.describe(), "precision": recipe.precision,
                               "steps": steps, "reps": reps,
                               "autotune_steps_per_s": steps * reps / seconds["ours"],
                               "plain_steps_per_s": steps * reps / seconds["plain"],
                               "ratio": seconds["plain"] / seconds["ours"],
                               "pair_ratios": [round(r, 4) for r in pairs]}
        rows.append(row)
        spread = f"pairs {min(pairs):.3f}-{max(pairs):.3f}" if reps > 1 else ""
        print(f"throughput {recipe.describe()}: autotune {row['autotune_steps_per_s']:.2f} "
              f"steps/s, plain loop {row['plain_steps_per_s']:.2f}: ratio {row['ratio']:.3f} "
              f"{spread}", flush=True)
    return rows


def step_rows(task: Task, recipes: Iterable[Recipe], steps: int, blocks: int = 8,
              device: str = "cpu") -> list[dict[str, Any]]:
    """For each recipe, ``blocks`` rounds of ``steps`` steps of ``Prepared.step`` and of the
    plain step, alternating which goes first, on the same ``steps`` batches (see the module
    docstring): seconds per step of each (medians over the blocks) and the ratio (plain /
    autotune's; 1.0 is no overhead)."""
    rows = []
    for recipe in recipes:
        ours, plain = _step_seconds(task, recipe, steps, blocks, torch.device(device))
        row = {"recipe": recipe.describe(), "precision": recipe.precision, "steps": steps,
               "blocks": blocks, "autotune_step_ms": ours * 1000, "plain_step_ms": plain * 1000,
               "ratio": plain / ours}
        rows.append(row)
        print(f"step {recipe.describe()}: Prepared.step {row['autotune_step_ms']:.2f} ms, "
              f"plain {row['plain_step_ms']:.2f} ms: ratio {row['ratio']:.3f}", flush=True)
    return rows


def _step_seconds(task: Task, recipe: Recipe, steps: int, blocks: int,
                  dev: torch.device) -> tuple[float, float]:
    """Median seconds per step of ``Prepared.step`` and of the plain step (``step_rows``)."""
    from autotune.train.data import make_batches
    from autotune.train.parallel import prepare

    torch.manual_seed(0)
    model = task.build_model().to(dev)
    model.train()
    batches = make_batches(task, recipe, 0, dev)
    batches.start()
    pool = [[batches.next() for _ in range(recipe.accumulation_steps)] for _ in range(steps)]
    batches.close()
    prepared = prepare(copy.deepcopy(model), recipe, dev, task=task)
    plain_model = copy.deepcopy(model)
    plain_opt = _adamw(plain_model, recipe)

    def plain_step(micro: list) -> None:
        _plain_step(task, recipe, plain_model, plain_opt, micro)

    def ours_step(micro: list) -> None:
        prepared.step(task, micro, strict=False, lazy=True)

    for fn in (ours_step, plain_step):  # warm both up: first kernels, optimizer state
        for micro in pool[:2]:
            fn(micro)
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    order = (("ours", ours_step), ("plain", plain_step))
    for block in range(blocks):
        for name, fn in (order if block % 2 == 0 else order[::-1]):
            _sync(dev)
            start = time.perf_counter()
            for micro in pool:
                fn(micro)
            _sync(dev)
            times[name].append((time.perf_counter() - start) / steps)
    return statistics.median(times["ours"]), statistics.median(times["plain"])


def default_recipes(task: Task) -> list[Recipe]:
    """The task's baseline in fp32, and in bf16 (the two precisions the goal names)."""
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    return [base, base.replace(precision="bf16")]


def _plain_step(task: Task, recipe: Recipe, net: torch.nn.Module,
                opt: torch.optim.Optimizer, micro: list) -> None:
    """The hand-written step: autocast, the loss (divided over the micro-batches when there
    are several), backward, ``opt.step``, ``zero_grad``; nothing read back."""
    dev_type = next(net.parameters()).device.type
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.precision)
    for batch in micro:
        with torch.autocast(dev_type, dtype=dtype, enabled=dtype is not None):
            loss = task.loss(net, batch)
        (loss / len(micro) if len(micro) > 1 else loss).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _adamw(net: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    return torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="bert")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=40, help="steps per run")
    parser.add_argument("--reps", type=int, default=16, help="pairs of runs per recipe")
    parser.add_argument("--part", choices=["trial", "step"], default="trial",
                        help="whole trials against the plain loop, or the step alone")
    args = parser.parse_args(argv)
    task = load_task(args.task, args.device)
    if args.part == "step":
        rows = step_rows(task, default_recipes(task), args.steps, args.reps // 2, args.device)
        print("| recipe | Prepared.step ms | plain step ms | ratio |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['recipe']} | {r['autotune_step_ms']:.2f} | {r['plain_step_ms']:.2f} "
                  f"| {r['ratio']:.3f} |")
        return 0
    rows = throughput_rows(task, default_recipes(task), args.steps, args.reps, args.device)
    print("| recipe | autotune steps/s | plain loop steps/s | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['autotune_steps_per_s']:.2f} | "
              f"{r['plain_steps_per_s']:.2f} | {r['ratio']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
