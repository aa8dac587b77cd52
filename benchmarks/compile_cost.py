"""What ``torch.compile`` costs and gains per built-in task: compile seconds (cold cache and
warm cache), steady-state step time eager and compiled, and the steps it takes to pay off.

Why: compilation is paid once per run, on the training clock; it belongs in a task's search
space only if it can pay for itself within a trial's time limit. This measures it through
autotune's own code (``prepare`` and ``Prepared.step``, the training batches a trial takes),
the task's baseline recipe with ``compile`` changed and nothing else.

Each measurement runs in a fresh process (``--one``), so nothing compiled in one leaks into
the next: ``cold`` uses an empty inductor cache, ``warm`` the cache the cold run filled (what
a later trial of the same shapes meets: ``autotune.knobs.compiler.use_compile_cache``).
``compile_s`` is torch's own count of compile time (``compile_seconds``); ``step_ms`` is the
median of the steps after the first few, best over ``--rounds`` processes (the machine is
shared: take the best). The break-even is ``compile_s / (eager step - compiled step)`` steps;
``trial steps`` compares what each runs within the task's ``max_train_seconds``.

Usage, from the repository root (2 threads, as on the 2-core reference machine)::

    .venv/bin/python -m benchmarks.compile_cost                 # mnist, bert, gpt; ~15 min
    .venv/bin/python -m benchmarks.compile_cost --tasks mnist --modes default --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from autotune.knobs.compiler import CACHE_ENV, cache_hits, compile_seconds
from autotune.recipe import baseline_recipe
from autotune.tasks import load_task
from autotune.train.data import make_batches
from autotune.train.parallel import prepare

WARMUP_STEPS = 3
"""Steps left out of the steady-state median (the first compiles; the next warm caches)."""


def measure(task_name: str, mode: str, steps: int, threads: int) -> dict[str, float]:
    """One process's measurement: ``steps`` optimizer steps of the task's baseline recipe with
    ``compile`` = ``mode``; compile seconds, cache hits, first-step and steady step time."""
    torch.set_num_threads(threads)
    task = load_task(task_name)
    recipe = baseline_recipe(task.default_batch_size, task.default_lr).replace(compile=mode)
    torch.manual_seed(0)
    model = task.build_model()
    model.train()
    dev = torch.device("cpu")
    batches = make_batches(task, recipe, 0, dev)
    prepared = prepare(model, recipe, dev)
    batches.start()
    times = []
    compiled = 0.0
    for _ in range(steps):
        micro = [batches.next() for _ in range(recipe.accumulation_steps)]
        before, start = compile_seconds(), time.perf_counter()
        prepared.step(task, micro)
        times.append(time.perf_counter() - start)
        compiled += compile_seconds() - before
    batches.close()
    return {"compile_s": compiled, "first_step_s": times[0], "cache_hits": cache_hits(),
            "step_ms": 1000 * statistics.median(times[WARMUP_STEPS:])}


def run_one(task: str, mode: str, steps: int, threads: int, cache: str) -> dict[str, float]:
    """``measure`` in a fresh process with inductor's cache at ``cache``."""
    env = {**os.environ, CACHE_ENV: cache}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.compile_cost", "--one", task, mode,
         "--steps", str(steps), "--threads", str(threads)],
        env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(task: str, mode: str, rounds: int, steps: int, threads: int) -> dict[str, object]:
    """Eager and ``mode``, best of ``rounds``: cold and warm compile, steady step times. The
    three runs of a round follow each other, so a burst of load elsewhere hits one round of
    each rather than every eager run."""
    eagers, colds, warms = [], [], []
    for _ in range(rounds):
        eagers.append(run_one(task, "none", steps, threads, tempfile.mkdtemp()))
        cache = tempfile.mkdtemp(prefix="inductor-")
        colds.append(run_one(task, mode, steps, threads, cache))
        warms.append(run_one(task, mode, steps, threads, cache))
    eager = min(eagers, key=lambda r: r["step_ms"])
    cold = min(colds, key=lambda r: r["compile_s"])
    warm = min(warms, key=lambda r: r["compile_s"])
    step = min(r["step_ms"] for r in colds + warms)
    gain_ms = eager["step_ms"] - step
    limit = load_task(task).max_train_seconds
    return {
        "task": task, "mode": mode, "eager_step_ms": eager["step_ms"],
        "compiled_step_ms": step, "cold_compile_s": cold["compile_s"],
        "warm_compile_s": warm["compile_s"], "warm_cache_hits": warm["cache_hits"],
        "break_even_steps_cold": cold["compile_s"] * 1000 / gain_ms if gain_ms > 0 else None,
        "trial_s": limit,
        "trial_steps_eager": int(limit * 1000 / eager["step_ms"]),
        "trial_steps_cold": max(0, int((limit - cold["compile_s"]) * 1000 / step)),
        "trial_steps_warm": max(0, int((limit - warm["compile_s"]) * 1000 / step)),
    }


def render(rows: list[dict[str, object]]) -> str:
    head = ("| task | mode | eager step | compiled step | compile cold | compile warm | "
            "break-even (cold) | steps in a trial: eager / compiled cold / warm |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        even = r["break_even_steps_cold"]
        lines.append(
            f"| {r['task']} | {r['mode']} | {r['eager_step_ms']:.1f} ms | "
            f"{r['compiled_step_ms']:.1f} ms | {r['cold_compile_s']:.1f} s | "
            f"{r['warm_compile_s']:.1f} s | "
            + (f"{even:.0f} steps" if even is not None else "never (no faster)")
            + f" | {r['trial_steps_eager']} / {r['trial_steps_cold']} / {r['trial_steps_warm']}"
            f" ({r['trial_s']:g} s) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["mnist", "bert", "gpt"])
    parser.add_argument("--modes", nargs="+", default=["default"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("TASK", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.steps, args.threads)))
        return
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; torch "
          f"{torch.__version__}; {args.threads} threads; best of {args.rounds}", flush=True)
    rows = []
    for task in args.tasks:
        for mode in args.modes:
            rows.append(table(task, mode, args.rounds, args.steps, args.threads))
            print(json.dumps(rows[-1]), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(render(rows))


if __name__ == "__main__":
    main()
