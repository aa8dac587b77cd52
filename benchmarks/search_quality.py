"""Search quality on several tasks, hints off: autotune against an oracle, TPE alone and random.

Issue 13 asks whether the search earns its keep on tasks nobody tuned it for. So no method gets
a task's hand-written ``suggested_recipes`` (``SearchRequest.task_warm_start=False`` for all),
every method gets the same warm start (``--warm-start rules``: the general rules of
``autotune.warm_start``, the same for all; ``none``: none for any), the same wall-clock
``--budget`` and the same search seeds. The tasks (``--tasks``, ``TASKS``): the built-ins
``bert``, ``mnist`` and ``gpt`` over their shipped spaces, and ``shapes``
(``benchmarks/tasks/shapes.py``), an image task that is not a built-in, loaded as a user task
(``module:function``) over the default space that a search generates for a user task.

Three parts, each printed as tables and written to JSON (``--out``):

1. **Oracle** (``--part oracle``), per task: the exhaustive grid of the space's main knobs
   (``BenchTask.grid``: precision x batch size x learning rate x warmup; values the space
   lacks on this machine, e.g. bf16 on a CPU without fast bf16, are left out), each recipe's
   time-to-target (TTA) measured over seeds 0-2 with the trial code itself (``run_trial``, in
   this process, no Ray). A run that does not reach the target counts as the task's oracle
   limit. Cached in ``benchmarks/results/oracle_<task>.json`` with the machine and library
   versions; reused while they, the grid, the seeds and the limit are the same
   (``--remeasure-oracle`` measures again).
2. **Searches at equal budget** (``--part search``), per task, method and search seed: a whole
   search (Ray Tune, in this process) through ``autotune.search.search``:

   - ``autotune``: as shipped (screening, TPE, ASHA + time-aware stopping, confirmation);
   - ``tpe``: Optuna's TPE alone (no screening, every trial to its target or limit, no
     confirmation);
   - ``random``: Optuna's RandomSampler, otherwise as ``tpe``.

   Each winner is re-measured over fresh seeds (100-102). Reported per task: the median over
   search seeds of that re-measured median TTA and its ratio to the oracle's best; autotune's
   against TPE's and random search's (their TTA / autotune's: above 1 is autotune faster);
   the search time until a trial first measured a TTA within 1.25x of the oracle's best; the
   overhead share (wall time not in training steps: start-up, screening, evaluation, setup,
   reporting); whether each search ended within its budget plus 5%. Then a summary table over
   the tasks with issue 13's "Done when" verdicts.
3. **Overhead** (``--part overhead``): training-step throughput of a trial against a plain
   hand-written loop on ``bert`` (``benchmarks.throughput``).

Cost on the 2-core CPU (idle; a shared machine is slower): the oracles about 2 h once
(``ORACLE_ESTIMATE_S``; ``bert``'s is cached), then ``tasks x methods x seeds x budget`` plus
re-measuring the winners: the defaults (4 tasks, 3 methods, 3 seeds, 5 minutes) about
3 h 20 min. ``--smoke`` runs the plumbing on the toy task (a 2-recipe oracle, three 15 s
searches: a minute or two when idle); tests/test_search_quality.py runs it with the search
faked in the default tier, and for real as a ``slow`` test.

Usage (from the repository root; run nothing else heavy meanwhile)::

    .venv/bin/python -m benchmarks.search_quality --part oracle            # the 4 oracles
    .venv/bin/python -m benchmarks.search_quality --part search --budget 5m --search-seeds 0 1 2
    .venv/bin/python -m benchmarks.search_quality --tasks mnist --search-seeds 0 --budget 2m
    .venv/bin/python -m benchmarks.search_quality --smoke --methods random
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autotune import objective
from autotune.default_space import default_space_yaml
from autotune.errors import ConfigError
from autotune.hardware import bf16_is_fast
from autotune.recipe import Recipe, baseline_recipe
from autotune.results import SCREENING_FILE
from autotune.search import SearchRequest, search
from autotune.search.documents import device_description, library_versions
from autotune.space import SearchSpace, load_space, parse_space, shipped_space_path
from autotune.tasks import Task, load_task
from autotune.train import TrialLimits, run_trial
from autotune.units import parse_duration
from benchmarks.throughput import throughput_rows

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ORACLE_SEEDS = (0, 1, 2)
REMEASURE_SEEDS = (100, 101, 102)
NEAR_BEST = 1.25
"""A search 'comes near' the oracle when a trial measures a TTA within this factor of its best."""
BUDGET_SLACK = 0.05
"""A search keeps its budget when its whole call ends within ``budget x (1 + this)``."""
GOALS = {"within_oracle": 1.2, "vs_random": 1.25, "vs_random_tasks": 2, "overhead": 0.15}
"""Issue 13's "Done when": winner within 1.2x of the oracle on every task; 1.25x faster than
random search on two tasks and never slower; overhead under 15% of the search."""


@dataclass(frozen=True)
class BenchTask:
    """One task of the benchmark: how a search names it, and its oracle grid."""

    name: str
    """Short name: ``--tasks``, result keys, ``oracle_<name>.json``."""
    model: str
    """What ``load_task`` and ``SearchRequest.model`` take (a built-in or ``module:function``)."""
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    """The oracle's axes, ``(knob, values)``: every combination, other knobs the baseline's."""
    oracle_limit_s: float
    """Training seconds after which an oracle or re-measured run counts as not reaching."""


TASKS: dict[str, BenchTask] = {
    # 24 recipes; measured 1,735 s (29 min) on the 2-core CPU (oracle_bert.json)
    "bert": BenchTask("bert", "bert", (("precision", ("fp32", "bf16")), ("batch_size", (32, 64)),
                                       ("lr", (5e-4, 1e-3, 2e-3)), ("warmup_steps", (0, 50))),
                      30.0),
    # 36 recipes x 3 seeds, TTA 1-6 s (limit 12 s) + ~2 s setup and evaluation: ~15-25 min
    "mnist": BenchTask("mnist", "mnist", (
        ("precision", ("fp32", "bf16")), ("batch_size", (32, 64, 128)),
        ("lr", (1e-3, 2e-3, 4e-3)), ("warmup_steps", (0, 30))), 12.0),
    # 16 recipes x 3 seeds, TTA 4-28 s (limit 40 s) + ~3 s: ~25-40 min
    "gpt": BenchTask("gpt", "gpt", (
        ("precision", ("fp32", "bf16")), ("batch_size", (16, 32)), ("lr", (1e-3, 2e-3)),
        ("warmup_steps", (0, 100))), 40.0),
    # 36 recipes x 3 seeds, limit 20 s: ~20-40 min (the default space a search generates)
    "shapes": BenchTask("shapes", "benchmarks.tasks.shapes:make_shapes_task", (
        ("precision", ("fp32", "bf16")), ("batch_size", (32, 64, 128)),
        ("lr", (1e-3, 2e-3, 4e-3)), ("warmup_steps", (0, 50))), 20.0),
}
SMOKE_TASK = BenchTask("toy", "tests.toy_task:make_task",
                       (("lr", (1e-2, 2e-2)), ("batch_size", (32,))), 5.0)
"""``--smoke``: the test suite's toy task (two blobs, an MLP), a 2-recipe oracle, 1 seed."""
ORACLE_ESTIMATE_S = {"bert": 1800, "mnist": 1200, "gpt": 2100, "shapes": 1800}
"""Rough wall seconds of each oracle on the idle 2-core CPU (printed before measuring)."""

METHODS: dict[str, dict[str, Any]] = {
    "autotune": {},
    "tpe": {"scheduler": "fifo", "screen": False, "confirm_top": 0},
    "random": {"sampler": "random", "scheduler": "fifo", "screen": False, "confirm_top": 0},
}
"""Each method's settings over the shipped defaults; all get ``task_warm_start=False``."""


# -- helpers ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the timings depend on: CPU model and cores, torch threads, library versions."""
    return {"device": device_description("cpu"), "threads": torch.get_num_threads(),
            "platform": platform.platform(), "versions": library_versions()}


def machine_key(info: dict[str, Any]) -> str:
    """A short hash of the machine and versions: a cached oracle is valid only under it."""
    text = json.dumps({k: info[k] for k in ("device", "threads", "versions")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def measure_tta(task: Task, recipe: Recipe, seeds: Sequence[int], limit: float) -> dict:
    """TTA of ``recipe`` for each seed (the trial code, this process); ``limit`` when the
    target is not reached in ``limit`` seconds of training."""
    runs = []
    for seed in seeds:
        limits = TrialLimits.for_task(task, seed=seed, max_train_seconds=limit)
        result = run_trial(task, recipe, limits)
        tta = result.tta_seconds if result.status == objective.REACHED else None
        runs.append({"seed": seed, "tta": tta, "status": result.status,
                     "train_seconds": result.train_seconds, "steps": result.steps})
    values = [r["tta"] if r["tta"] is not None else limit for r in runs]
    return {"runs": runs, "median": statistics.median(values), "limit": limit}


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def fmt(seconds: float | None) -> str:
    return "-" if seconds is None or not math.isfinite(seconds) else f"{seconds:.1f}s"


def describe(recipe: dict[str, Any] | None) -> str:
    return "-" if recipe is None else Recipe.from_dict(recipe).describe()


# -- 1. oracle ----------------------------------------------------------------------------------


def task_space(task: Task, model: str) -> SearchSpace:
    """The space a search of ``model`` uses by default: the shipped one, or else the default
    space generated from the task's baseline for this CPU (as ``autotune.search.api`` does)."""
    path = shipped_space_path(model)
    if path.exists():
        return load_space(path)
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    text = default_space_yaml(base, "cpu", bf16_fast=bf16_is_fast("cpu"), source=model,
                              dataset=task.is_dataset, teacher=task.teacher is not None,
                              cpus=os.cpu_count() or 1)
    return parse_space(text, source=f"default space for {model}")


def oracle_grid(bench: BenchTask, base: Recipe, space: SearchSpace
                ) -> tuple[list[Recipe], list[str]]:
    """Every combination of ``bench.grid``'s values on ``base``, and what was left out: a value
    the space does not hold (a recipe a search could never propose is no fair oracle)."""
    axes, dropped = [], []
    for knob, values in bench.grid:
        kept = tuple(v for v in values if space.knob(knob).contains(v))
        dropped += [f"{knob}={v}" for v in values if v not in kept]
        axes.append((knob, kept))
    grid = []
    for combo in itertools.product(*(values for _, values in axes)):
        recipe = base.replace(**dict(zip((k for k, _ in axes), combo)))
        try:
            space.point_for(recipe)
        except ConfigError:
            dropped.append(recipe.describe())
            continue
        grid.append(recipe)
    return grid, dropped


def cached_oracle(path: Path, info: dict[str, Any], grid: list[Recipe], seeds: Sequence[int],
                  limit: float) -> dict[str, Any] | None:
    """The oracle saved at ``path`` if it was measured here (machine and versions), on the same
    grid, seeds and limit; else None (and a line saying why)."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    same_grid = sorted(json.dumps(Recipe.from_dict(e["recipe"]).to_dict(), sort_keys=True)
                       for e in saved.get("entries", ())) == \
        sorted(json.dumps(r.to_dict(), sort_keys=True) for r in grid)
    reasons = [why for ok, why in (
        (saved.get("machine_key") == machine_key(info), "another machine or library versions"),
        (same_grid, "another grid"), (list(saved.get("seeds", ())) == list(seeds), "other seeds"),
        (saved.get("limit_s") == limit, "another limit")) if not ok]
    if reasons:
        print(f"oracle: {path} is for {', '.join(reasons)}; measuring again")
        return None
    return saved


def run_oracle(bench: BenchTask, oracle_dir: Path, seeds: Sequence[int], remeasure: bool
               ) -> dict[str, Any]:
    """The task's oracle: cached, or every grid recipe's TTA over ``seeds`` measured now."""
    info = machine()
    task = load_task(bench.model, "cpu")
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    grid, dropped = oracle_grid(bench, base, task_space(task, bench.model))
    path = oracle_dir / f"oracle_{bench.name}.json"
    saved = None if remeasure else cached_oracle(path, info, grid, seeds, bench.oracle_limit_s)
    if saved is not None:
        print(f"oracle {bench.name}: reusing {path} (measured {saved['measured_at']})")
        return saved
    estimate = ORACLE_ESTIMATE_S.get(bench.name)
    print(f"oracle {bench.name}: {len(grid)} recipes x {len(seeds)} seeds, limit "
          f"{bench.oracle_limit_s:.0f}s{f', about {estimate / 60:.0f} min' if estimate else ''}"
          f"{'; not in the space here: ' + ', '.join(dropped) if dropped else ''}", flush=True)
    entries = []
    start = time.time()
    for i, recipe in enumerate(grid, 1):
        m = measure_tta(task, recipe, seeds, bench.oracle_limit_s)
        entries.append({"recipe": recipe.to_dict(), "describe": recipe.describe(), **m})
        ttas = ", ".join("-" if r["tta"] is None else f"{r['tta']:.1f}" for r in m["runs"])
        print(f"oracle {bench.name} [{i:>2}/{len(grid)}] median {m['median']:5.1f}s ({ttas})  "
              f"{recipe.describe()}  [{time.time() - start:.0f}s]", flush=True)
    out = {"task": bench.name, "model": bench.model, "target": task.target,
           "seeds": list(seeds), "limit_s": bench.oracle_limit_s, "dropped": dropped,
           "machine": info, "machine_key": machine_key(info),
           "measured_at": time.strftime("%Y-%m-%d %H:%M"), "wall_s": round(time.time() - start),
           "entries": entries, "best": min(entries, key=lambda e: e["median"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def print_oracle(oracle: dict[str, Any]) -> None:
    rows = [["rank", "median TTA", "runs (s)", "recipe"]]
    ranked = sorted(oracle["entries"], key=lambda e: e["median"])
    for i, e in enumerate(ranked, 1):
        runs = ", ".join("-" if r["tta"] is None else f"{r['tta']:.1f}" for r in e["runs"])
        rows.append([str(i), f"{e['median']:.1f}s", runs, e["describe"]])
    print(f"\nOracle {oracle['task']}: {len(ranked)} recipes x {len(oracle['seeds'])} seeds, "
          f"target {oracle['target']} ('-' = not reached in {oracle['limit_s']:.0f}s)")
    print(_table(rows))


# -- 2. searches --------------------------------------------------------------------------------


def search_request(bench: BenchTask, method: str, seed: int, budget_s: float, results_dir: Path,
                   warm_start: bool) -> SearchRequest:
    """The request of one search: the method's settings, hints off, the same warm start."""
    return SearchRequest(model=bench.model, device="cpu", trials=1000, time_budget_s=budget_s,
                         seed=seed, results_dir=str(results_dir), task_warm_start=False,
                         warm_start=warm_start, **METHODS[method])


def run_one_search(bench: BenchTask, method: str, seed: int, budget_s: float, workdir: Path,
                   warm_start: bool) -> dict[str, Any]:
    """One whole search through the Python search API (task loading, screening, confirmation
    and files included); ``wall_s`` is the whole call, what the budget promises."""
    request = search_request(bench, method, seed, budget_s,
                             workdir / f"{bench.name}-{method}-seed{seed}", warm_start)
    start = time.time()
    outcome = search(request)
    wall = time.time() - start
    best = outcome.summary.best
    return {"task": bench.name, "method": method, "seed": seed, "start": start, "wall_s": wall,
            "search_wall_s": outcome.wall_seconds, "budget_s": budget_s,
            "within_budget": wall <= budget_s * (1 + BUDGET_SLACK),
            "records": [r.to_json() for r in outcome.records],
            "screening": screen_lines(Path(str(request.results_dir))),
            "trials": len(outcome.records),
            "winner": None if best is None else best.record.recipe,
            "winner_search_tta": None if best is None else best.tta_seconds}


def screen_lines(run_dir: Path) -> list[dict[str, Any]]:
    """The search's screening records (``screening.jsonl``; none when it did not screen)."""
    path = run_dir / SCREENING_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.exists() else []


def first_near_best(run: dict[str, Any], best: float) -> float | None:
    """Search seconds until a trial first measured a TTA within ``NEAR_BEST`` of ``best``."""
    hits = [r["finished_at"] - run["start"] for r in run["records"]
            if r.get("status") == objective.REACHED and r.get("tta_seconds") is not None
            and r["tta_seconds"] <= NEAR_BEST * best and r.get("finished_at") is not None]
    return min(hits) if hits else None


def overhead(run: dict[str, Any]) -> dict[str, float]:
    """Where a search's wall time went, from its trial records (trials run one at a time)."""
    records = run["records"]
    wall = run["wall_s"]
    train = sum(r.get("train_seconds") or 0.0 for r in records)
    evals = sum(r.get("eval_seconds") or 0.0 for r in records)
    setup = sum(r.get("setup_seconds") or 0.0 for r in records)
    trial_wall = sum(r["finished_at"] - r["started_at"] for r in records
                     if r.get("started_at") and r.get("finished_at"))
    screened = run.get("screening") or []
    # Screening's own steps (warm-up and timed), and its phase: from the search's start (Ray's
    # start-up included) to its last measurement's end.
    screen_steps = sum((r.get("timed_seconds") or 0.0) + (r.get("warmup_seconds") or 0.0)
                       for r in screened)
    ends = [r["finished_at"] for r in screened if r.get("finished_at")]
    screen_phase = max(ends) - run["start"] if ends and "start" in run else 0.0
    return {
        "wall_s": wall,
        "training_steps": train / wall,
        "evaluation": evals / wall,
        "model_and_data_setup": setup / wall,
        "trial_start_and_reporting": max(0.0, trial_wall - train - evals - setup) / wall,
        "driver_screening_and_ray": max(0.0, wall - trial_wall) / wall,
        "screening_steps": screen_steps / wall,
        "start_and_screening_phase": screen_phase / wall,
        "not_training": max(0.0, 1.0 - train / wall),
    }


def run_searches(bench: BenchTask, args: argparse.Namespace, oracle: dict[str, Any]
                 ) -> list[dict[str, Any]]:
    """Every method and search seed on one task, each winner re-measured on fresh seeds."""
    budget = parse_duration(args.budget)
    task = load_task(bench.model, "cpu")
    workdir = Path(tempfile.mkdtemp(prefix=f"search_quality_{bench.name}_"))
    print(f"{bench.name}: each search's run directory is kept under {workdir} (remove it when "
          "done)", flush=True)
    best = oracle["best"]["median"]
    runs = []
    for seed in args.search_seeds:
        for method in args.methods:
            print(f"search {bench.name}: {method} seed {seed}, budget {args.budget} ...",
                  flush=True)
            run = run_one_search(bench, method, seed, budget, workdir,
                                 args.warm_start == "rules")
            if run["winner"] is not None:
                run["winner_remeasured"] = measure_tta(
                    task, Recipe.from_dict(run["winner"]), args.remeasure_seeds,
                    bench.oracle_limit_s)
            run["first_near_best_s"] = first_near_best(run, best)
            run["overhead"] = overhead(run)
            print(f"  winner {describe(run['winner'])}: search TTA "
                  f"{fmt(run['winner_search_tta'])}, re-measured median "
                  f"{fmt(run.get('winner_remeasured', {}).get('median'))}; trials "
                  f"{len(run['records'])}; first within {NEAR_BEST}x of the oracle at "
                  f"{fmt(run['first_near_best_s'])}; wall {run['wall_s']:.0f}s of "
                  f"{budget:.0f}s; not training {run['overhead']['not_training']:.0%} "
                  f"(start-up and screening "
                  f"{run['overhead']['start_and_screening_phase']:.0%})",
                  flush=True)
            runs.append(run)
    return runs


def summarize_task(runs: list[dict[str, Any]], oracle: dict[str, Any]) -> dict[str, Any]:
    """Per method: medians over search seeds (a search without a winner counts as the oracle
    limit), ratios to the oracle and, for ``autotune``, the others' TTA over its own."""
    best = oracle["best"]["median"]
    table: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        winners = [r.get("winner_remeasured", {}).get("median", oracle["limit_s"]) for r in mine]
        near = [r["first_near_best_s"] for r in mine]
        med = statistics.median(winners)
        table[method] = {
            "searches": len(mine), "winner_tta_median": med, "winner_ttas": winners,
            "ratio_to_oracle_best": med / best,
            "first_near_best_s": near,
            "first_near_best_median_s": statistics.median(
                [x if x is not None else math.inf for x in near]),
            "trials_median": statistics.median(r.get("trials", len(r.get("records", ())))
                                               for r in mine),
            "not_training_median": statistics.median(r["overhead"]["not_training"]
                                                     for r in mine),
            "within_budget": [r["within_budget"] for r in mine],
            "wall_over_budget_max": max(r["wall_s"] / r["budget_s"] for r in mine),
        }
    if "autotune" in table:
        mine = table["autotune"]["winner_tta_median"]
        table["autotune"]["speedup_vs"] = {
            m: t["winner_tta_median"] / mine for m, t in table.items() if m != "autotune"}
    return table


def print_task(name: str, table: dict[str, Any], oracle: dict[str, Any], budget: str) -> None:
    rows = [["method", "searches", "trials", "winner TTA (re-measured)", "x oracle",
             "autotune faster by", f"first within {NEAR_BEST}x", "not training",
             "in budget+5%"]]
    speedup = table.get("autotune", {}).get("speedup_vs", {})
    for method, t in table.items():
        rows.append([
            method, str(t["searches"]), f"{t['trials_median']:.0f}",
            f"{t['winner_tta_median']:.1f}s ({', '.join(f'{x:.1f}' for x in t['winner_ttas'])})",
            f"{t['ratio_to_oracle_best']:.2f}",
            f"{speedup[method]:.2f}x" if method in speedup else "-",
            fmt(t["first_near_best_median_s"]) if math.isfinite(t["first_near_best_median_s"])
            else "never",
            f"{t['not_training_median']:.0%}",
            f"{sum(t['within_budget'])}/{len(t['within_budget'])} "
            f"(max {t['wall_over_budget_max']:.2f}x)"])
    print(f"\n{name}: searches at equal budget ({budget} each, medians over search seeds); "
          f"oracle best {oracle['best']['median']:.1f}s ({oracle['best']['describe']})")
    print(_table(rows))


def summary(tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per task autotune's figures, and issue 13's "Done when" verdicts over all tasks."""
    per_task: dict[str, Any] = {}
    for name, table in tables.items():
        mine = table.get("autotune")
        if mine is None:
            continue
        per_task[name] = {
            "x_oracle": mine["ratio_to_oracle_best"],
            "vs_random": mine["speedup_vs"].get("random"),
            "vs_tpe": mine["speedup_vs"].get("tpe"),
            "first_near_best_median_s": mine["first_near_best_median_s"],
            "not_training": mine["not_training_median"],
            "all_within_budget": all(all(t["within_budget"]) for t in table.values()),
        }
    vs_random = [t["vs_random"] for t in per_task.values() if t["vs_random"] is not None]
    verdicts: dict[str, bool | None] = {
        "within_oracle_every_task": all(t["x_oracle"] <= GOALS["within_oracle"]
                                        for t in per_task.values()),
        # None: random search was not run, so there is nothing to judge
        "faster_than_random_on_two": sum(v >= GOALS["vs_random"] for v in vs_random)
        >= GOALS["vs_random_tasks"] if vs_random else None,
        "never_slower_than_random": all(v >= 1.0 for v in vs_random) if vs_random else None,
        "overhead_under_15pct": all(t["not_training"] < GOALS["overhead"]
                                    for t in per_task.values()),
        "every_search_in_budget": all(t["all_within_budget"] for t in per_task.values()),
    } if per_task else {}
    return {"tasks": per_task, "verdicts": verdicts}


def print_summary(result: dict[str, Any]) -> None:
    rows = [["task", "x oracle", "vs random", "vs tpe", f"first within {NEAR_BEST}x",
             "not training", "all in budget"]]
    for name, t in result["tasks"].items():
        rows.append([name, f"{t['x_oracle']:.2f}",
                     "-" if t["vs_random"] is None else f"{t['vs_random']:.2f}x",
                     "-" if t["vs_tpe"] is None else f"{t['vs_tpe']:.2f}x",
                     fmt(t["first_near_best_median_s"])
                     if math.isfinite(t["first_near_best_median_s"]) else "never",
                     f"{t['not_training']:.0%}",
                     "yes" if t["all_within_budget"] else "NO"])
    print("\nSummary: autotune per task (its winner's TTA over the oracle's best; the other "
          "methods' winner TTA over autotune's)")
    print(_table(rows))
    for goal, ok in result["verdicts"].items():
        print(f"  {goal}: {'n/a' if ok is None else 'yes' if ok else 'NO'}")


# -- 3. overhead --------------------------------------------------------------------------------


def run_throughput(steps: int, reps: int) -> list[dict[str, Any]]:
    """autotune's trial loop against a plain loop on ``bert`` (``benchmarks.throughput``)."""
    task = load_task("bert", "cpu")
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    return throughput_rows(task, (base, base.replace(precision="bf16", batch_size=64, lr=1e-3)),
                           steps, reps)


def print_throughput(throughput: list[dict[str, Any]]) -> None:
    rows = [["recipe", "autotune steps/s", "plain loop steps/s", "ratio"]]
    for t in throughput:
        rows.append([t["recipe"], f"{t['autotune_steps_per_s']:.2f}",
                     f"{t['plain_steps_per_s']:.2f}", f"{t['ratio']:.3f}"])
    print("\nTraining-step throughput: a trial vs a hand-written loop (pairs of runs, "
          "alternated; all steps over all seconds)")
    print(_table(rows))


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; ``--smoke`` swaps in the toy task, one seed and a small budget."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--part", choices=["all", "oracle", "search", "overhead"], default="all")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--budget", default=None, help="wall-clock budget of each search "
                        "(default 5m; 15s with --smoke)")
    parser.add_argument("--search-seeds", type=int, nargs="+", default=None,
                        help="default 0 1 2 (0 with --smoke)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--warm-start", choices=["rules", "none"], default="rules",
                        help="the same for every method: the general rules, or none")
    parser.add_argument("--oracle-dir", default=str(RESULTS))
    parser.add_argument("--remeasure-oracle", action="store_true")
    parser.add_argument("--steps", type=int, default=40, help="steps per throughput run")
    parser.add_argument("--reps", type=int, default=16, help="pairs of throughput runs")
    parser.add_argument("--out", default=None,
                        help="JSON results (default benchmarks/results/search_quality.json)")
    parser.add_argument("--smoke", action="store_true",
                        help="plumbing only: the toy task, a 2-recipe oracle in a temporary "
                        "folder, seed 0, 15 s searches, one re-measuring seed")
    args = parser.parse_args(argv)
    args.oracle_seeds, args.remeasure_seeds = ORACLE_SEEDS, REMEASURE_SEEDS
    args.benches = [TASKS[name] for name in dict.fromkeys(args.tasks)]
    if args.smoke:
        args.benches = [SMOKE_TASK]
        args.oracle_seeds, args.remeasure_seeds = (0,), (100,)
        if args.oracle_dir == str(RESULTS):
            args.oracle_dir = tempfile.mkdtemp(prefix="search_quality_smoke_")
        args.part = "search" if args.part in ("all", "search") else args.part
    args.budget = args.budget or ("15s" if args.smoke else "5m")
    args.search_seeds = args.search_seeds or ([0] if args.smoke else [0, 1, 2])
    args.out = args.out or str(Path(args.oracle_dir) / "search_quality.json" if args.smoke
                               else RESULTS / "search_quality.json")
    return args


def kept_runs(previous: dict[str, Any], task: str, args: argparse.Namespace
              ) -> list[dict[str, Any]]:
    """The earlier ``--out``'s searches of ``task`` that this run does not redo: another
    method, or another search seed, at the same budget and warm start (``--methods autotune``
    after a change to autotune alone re-runs its searches and keeps TPE's and random
    search's)."""
    entry = (previous.get("tasks") or {}).get(task) or {}
    if entry.get("budget") != args.budget or previous.get("warm_start") != args.warm_start:
        return []
    redone = {(m, s) for m in args.methods for s in args.search_seeds}
    return [r for r in entry.get("runs", []) if (r["method"], r["seed"]) not in redone]


def merge_results(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` over the tasks (and throughput) of an earlier ``--out``, so that tasks run one
    at a time accumulate in one file; the summary is then over every task in it."""
    tasks = dict(previous.get("tasks") or {})
    for name, entry in new["tasks"].items():  # an oracle-only run keeps the task's searches
        tasks[name] = {**tasks.get(name, {}), **entry}
    kept = {k: previous[k] for k in ("throughput",) if k in previous}
    return {**kept, **new, "tasks": tasks}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the parts asked for, print their tables, write (merge into) ``--out``."""
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    out: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
                           "budget": args.budget, "warm_start": args.warm_start,
                           "hints": "off (task_warm_start=False for every method)",
                           "tasks": {}}
    path = Path(args.out)
    previous = json.loads(path.read_text()) if path.exists() else {}
    if args.part in ("all", "oracle", "search"):
        for bench in args.benches:
            oracle = run_oracle(bench, Path(args.oracle_dir), args.oracle_seeds,
                                args.remeasure_oracle)
            print_oracle(oracle)
            entry: dict[str, Any] = {"model": bench.model, "oracle_best": oracle["best"],
                                     "oracle_recipes": len(oracle["entries"])}
            if args.part in ("all", "search"):
                runs = kept_runs(previous, bench.name, args) + run_searches(bench, args, oracle)
                entry["searches"] = summarize_task(runs, oracle)
                entry["budget"] = args.budget
                entry["runs"] = [{k: v for k, v in r.items() if k not in ("records", "screening")}
                                  for r in runs]
                print_task(bench.name, entry["searches"], oracle, args.budget)
            out["tasks"][bench.name] = entry
    if args.part in ("all", "overhead"):
        out["throughput"] = run_throughput(args.steps, args.reps)
        print_throughput(out["throughput"])
    path.parent.mkdir(parents=True, exist_ok=True)
    out = merge_results(previous, out)
    if any("searches" in t for t in out["tasks"].values()):
        out["summary"] = summary({name: t["searches"] for name, t in out["tasks"].items()
                                  if "searches" in t})
        print_summary(out["summary"])
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"\nwrote {path}")
    return out


if __name__ == "__main__":
    main()
