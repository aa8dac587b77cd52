"""What the evaluation schedule costs and what it does to time-to-target.

Why: a trial evaluates a fixed subset of the validation data while far from its target and
the full set near it (``autotune.train.evaluation``). This measures, per task and seed, the
same baseline trial with that schedule and with the full set at every point: evaluation
seconds as a share of training seconds, the evaluation points of each kind, and the
time-to-target of each (the same seed trains the same model on the same data, so a TTA that
moves is the schedule's doing or the machine's noise: the table shows both runs' TTA and the
evaluation interval, the TTA's resolution). Prints a table and writes JSON::

    .venv/bin/python -m benchmarks.eval_schedule --tasks bert mnist --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from autotune.recipe import baseline_recipe
from autotune.tasks import load_task
from autotune.train import TrialLimits, run_trial

RESULTS = Path(__file__).parent / "results"


def measure(task_name: str, seeds: list[int]) -> list[dict[str, Any]]:
    """Each seed's baseline trial with the schedule (``quick``) and without (``full``)."""
    task = load_task(task_name, "cpu")
    recipe = baseline_recipe(task.default_batch_size, task.default_lr)
    rows = []
    for seed in seeds:
        row: dict[str, Any] = {"task": task_name, "seed": seed,
                               "eval_every_s": task.eval_every_seconds}
        for name, quick in (("quick", True), ("full", False)):
            limits = dataclasses.replace(TrialLimits.for_task(task, seed=seed), quick_eval=quick)
            r = run_trial(task, recipe, limits)
            row[name] = {"status": r.status, "tta_s": r.tta_seconds, "train_s": r.train_seconds,
                         "eval_s": r.eval_seconds, "eval_share": r.eval_seconds / r.train_seconds
                         if r.train_seconds else None, "points_full": r.eval_points_full,
                         "points_quick": r.eval_points_quick, "steps": r.steps}
            print(f"{task_name} seed {seed} {name:5}: {r.status:11} tta "
                  f"{r.tta_seconds if r.tta_seconds is None else round(r.tta_seconds, 2)} "
                  f"eval {r.eval_seconds:.1f}s / train {r.train_seconds:.1f}s, points "
                  f"{r.eval_points_full} full + {r.eval_points_quick} quick", flush=True)
        rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[list[str]]:
    """One line per task: median evaluation share and TTA with and without the schedule."""
    out = [["task", "eval/train, schedule", "eval/train, full set", "median TTA, schedule",
            "median TTA, full set", "interval"]]
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]

        def med(kind: str, key: str, rows: list[dict[str, Any]] = mine) -> float | None:
            values = [r[kind][key] for r in rows if r[kind][key] is not None]
            return statistics.median(values) if values else None

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{v:.0%}"

        def sec(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f} s"

        out.append([task, pct(med("quick", "eval_share")), pct(med("full", "eval_share")),
                    sec(med("quick", "tta_s")), sec(med("full", "tta_s")),
                    f"{mine[0]['eval_every_s']:g} s"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["bert", "mnist"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=str(RESULTS / "eval_schedule_cpu.json"))
    args = parser.parse_args(argv)
    start = time.time()
    rows = [row for task in args.tasks for row in measure(task, args.seeds)]
    table = summary(rows)
    print("\n| " + " | ".join(table[0]) + " |\n|" + "---|" * len(table[0]))
    for line in table[1:]:
        print("| " + " | ".join(line) + " |")
    Path(args.out).write_text(json.dumps({"measured_at": time.strftime("%Y-%m-%d %H:%M"),
                                          "wall_s": round(time.time() - start), "rows": rows},
                                         indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
