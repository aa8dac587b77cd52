"""``autotune search``: flags to a ``SearchRequest``, the search's events to progress lines."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autotune.cli._tools import add_task_args, task_options
from autotune.errors import ConfigError, UserError
from autotune.recipe import BASELINE_NOTE
from autotune.report import (
    confirming_line,
    finished_line,
    leaderboard,
    plan_lines,
    resumed_line,
    started_line,
    verdict_lines,
)
from autotune.results import TRIALS_FILE, TrialRecord
from autotune.search import (
    DEFAULT_TIME_BUDGET_S,
    DEFAULT_TRIALS,
    SearchInterrupted,
    SearchRequest,
    search,
    summarize,
)
from autotune.search.settings import DEFAULT_CONFIRM_SEEDS, DEFAULT_CONFIRM_TOP
from autotune.units import format_duration, parse_bytes, parse_duration

EXIT_INTERRUPTED = 130


def add_search(sub: Any) -> None:
    p = sub.add_parser(
        "search", help="search for the fastest recipe (the main command)",
        description=(
            "Run short real training trials, proposed by Optuna and run by Ray Tune, and report "
            "the recipe with the shortest time-to-target (training seconds to reach the "
            "target metric) whose peak memory fits the budget. The baseline recipe ("
            + BASELINE_NOTE + ") is always the first trial; every speedup is measured against "
            "it. Writes every trial to the results directory as it ends, and the best recipe "
            "to best_recipe.yaml."
        ),
        epilog="Example: autotune search --model bert --budget 16GB --trials 12 --time-budget 8m",
    )
    add_task_args(p)
    p.add_argument("--budget", default=None,
                   help="peak memory one device may use, e.g. 16GB (10^9), 16GiB (2^30), 512MiB; "
                   "a trial that exceeds it is infeasible (default: no limit)")
    p.add_argument("--space", default=None,
                   help="search-space YAML (default: search_spaces/<model>.yaml shipped with "
                   "autotune)")
    p.add_argument("--trials", type=int, default=None,
                   help=f"most trials to run, the baseline included (default {DEFAULT_TRIALS})")
    p.add_argument("--time-budget", default=None,
                   help="no trial starts after this much search time: 300, 90s, 5m, 1h "
                   f"(default {format_duration(DEFAULT_TIME_BUDGET_S)}; running trials finish)")
    p.add_argument("--max-trial-time", default=None,
                   help="training-time limit of one trial, e.g. 60s (default: the task's)")
    p.add_argument("--output", default=None,
                   help="where to write the best recipe (default: <results-dir>/best_recipe.yaml)")
    p.add_argument("--results-dir", default=None,
                   help="directory for every trial's recipe and measurements "
                   "(default: autotune_runs/<model>-<date>-<time>/)")
    _add_cluster_args(p)
    _add_confirm_args(p)
    p.set_defaults(func=cmd_search)


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    """Where the trials run: a Ray cluster, resources, placement, storage."""
    p.add_argument("--address", default=None,
                   help="Ray cluster to run on: HOST:PORT of its head, or auto (default: "
                   "RAY_ADDRESS if set, else start Ray on this machine)")
    p.add_argument("--cpus-per-trial", type=float, default=None,
                   help="CPUs a trial holds (each worker's, for a multi-worker trial on GPUs; "
                   "default: on GPUs the node's CPUs per GPU, on CPUs a whole node)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs a trial holds, per worker (default 1 where the cluster has GPUs)")
    p.add_argument("--max-concurrent-trials", type=int, default=None,
                   help="trials running at once at most (default: as many as the cluster fits)")
    p.add_argument("--storage", default=None,
                   help="Ray Tune's storage path (shared filesystem or s3:// URI on a cluster; "
                   "default <results-dir>/ray); autotune's own results are in --results-dir")
    p.add_argument("--placement", choices=["pack", "spread"], default="pack",
                   help="how Ray places a multi-worker trial's workers: pack (one machine "
                   "where they fit, default) or spread (over machines)")
    p.add_argument("--workers-per-trial", type=int, default=None,
                   help="workers of a trial whose recipe is parallel (ddp, fsdp, zero1-3), one "
                   "per GPU on a GPU machine (default: the GPUs of this machine; on a CPU, 2 "
                   "when the space searches parallel modes, else 1)")


def _add_confirm_args(p: argparse.ArgumentParser) -> None:
    """Confirmation of the winners, and resuming."""
    p.add_argument("--confirm", type=int, default=DEFAULT_CONFIRM_TOP, metavar="N",
                   help="after the search, run the N fastest recipes (and the baseline) again "
                   "with --confirm-seeds more seeds and pick the lowest median time-to-target "
                   f"(default {DEFAULT_CONFIRM_TOP}; 0 turns it off); the search keeps a "
                   "quarter of --time-budget for these runs")
    p.add_argument("--confirm-seeds", type=int, default=DEFAULT_CONFIRM_SEEDS, metavar="K",
                   help=f"further seeds per confirmed recipe (default {DEFAULT_CONFIRM_SEEDS})")
    p.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                   help="do not try the general warm-start rules after the baseline (lower "
                   "precision where the device runs it natively; a larger batch with a scaled "
                   "learning rate and warmup; see docs/concepts.md)")
    p.add_argument("--task-warm-start", action="store_true",
                   help="also try the recipes the task itself suggests (Task.suggested_recipes) "
                   "right after the baseline (off by default)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the interrupted search whose results are in DIR, with its "
                   "settings: finished trials are not run again and the sampler learns from "
                   "them (--trials, --time-budget, --address and the resource flags may be "
                   "given again to change them)")


def cmd_search(args: argparse.Namespace) -> int:
    """Parse the flags into a ``SearchRequest``, run ``autotune.search.search``, render."""
    request, given = search_request(args)
    printer = _SearchPrinter(request.trials)
    try:
        outcome = search(request, printer, given)
    except SearchInterrupted as stop:
        print(f"\nautotune: search interrupted. The {stop.finished} trials finished in this run, "
              "and those that were running (as 'interrupted', with what they measured so far), "
              f"are in {stop.run_dir / TRIALS_FILE}. Resume the search with:\n"
              f"  {stop.resume_command}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"\nsearch finished: {len(outcome.records)} trials in "
          f"{format_duration(outcome.wall_seconds)}; results in {outcome.run_dir}/")
    print(leaderboard(outcome.records))
    if outcome.no_winner:
        raise UserError(outcome.no_winner)
    print()
    for line in verdict_lines(outcome):
        print(line)
    return 0


def search_request(args: argparse.Namespace) -> tuple[SearchRequest, dict[str, Any]]:
    """The request the flags ask for, and the resumable settings given explicitly (for
    ``--resume``). Every flag problem is reported at once (one ``ConfigError``)."""
    problems: list[str] = []

    def parsed(parse: Any, value: Any, *extra: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value, *extra)
        except UserError as exc:
            problems.append(str(exc))
            return None

    budget = parsed(parse_bytes, args.budget)
    time_budget = parsed(lambda v: parse_duration(v, what="--time-budget"), args.time_budget)
    max_trial = parsed(lambda v: parse_duration(v, what="--max-trial-time"), args.max_trial_time)
    options = parsed(task_options, args.task_option) or {}
    given = {k: v for k, v in {
        "trials": args.trials, "time_budget_s": time_budget, "address": args.address,
        "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
        "max_concurrent_trials": args.max_concurrent_trials, "storage": args.storage,
    }.items() if v is not None}
    request = SearchRequest(
        model=args.model, task_options=options, budget_bytes=budget, space=args.space,
        target=args.target, seed=args.seed, device=args.device,
        max_trial_seconds=max_trial, results_dir=args.results_dir, output=args.output,
        placement=args.placement, workers_per_trial=args.workers_per_trial,
        warm_start=args.warm_start, task_warm_start=args.task_warm_start,
        confirm_top=args.confirm, confirm_seeds=args.confirm_seeds, resume=args.resume,
        **given,
    )
    problems += request.problems()
    if problems:
        raise ConfigError("autotune search", problems)
    return request, given


class _SearchPrinter:
    """Renders the search's events as progress lines (``autotune.report``)."""

    def __init__(self, trials: int) -> None:
        self.trials = trials
        self.metric = "acc"
        self.records: list[TrialRecord] = []

    def __call__(self, kind: str, payload: Any) -> None:
        if kind == "plan":
            self.trials, self.metric = payload.request.trials, payload.task.metric
            for line in plan_lines(payload):
                print(line)
        elif kind == "resumed":
            print(resumed_line(payload, payload["run_dir"]))
            self.records += payload["records"]
        elif kind == "started":
            print(started_line(payload, self.trials))
        elif kind == "confirming":
            print(confirming_line(payload))
        elif kind == "finished":
            self.records.append(payload)
            print(finished_line(payload, self.trials, summarize(self.records).best,
                                self.metric))
        elif kind == "warning":
            print(f"warning: {payload}", file=sys.stderr)
        sys.stdout.flush()
