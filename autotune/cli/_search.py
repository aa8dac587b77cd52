"""``autotune search``: flags to a ``SearchRequest``, the search's events to progress lines and
a live status line (``autotune.cli._progress``), the outcome to an exit code
(``autotune.cli._exit``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autotune.cli._exit import EXIT_INTERRUPTED, EXIT_NO_WINNER, EXIT_OK
from autotune.cli._integrations import add_integration_args, integration_request
from autotune.cli._progress import StatusDisplay, pick_mode
from autotune.cli._tools import add_task_args, task_options
from autotune.errors import ConfigError, UserError
from autotune.recipe import BASELINE_NOTE
from autotune.report import (
    confirming_line,
    finished_line,
    leaderboard,
    plan_lines,
    resources_line,
    resumed_line,
    screened_line,
    screening_line,
    screening_table,
    started_line,
    status_line,
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
from autotune.search.progress import SearchProgress
from autotune.search.settings import DEFAULT_CONFIRM_SEEDS, DEFAULT_CONFIRM_TOP
from autotune.search.tracking import LOGGERS
from autotune.units import format_duration, parse_bytes, parse_duration


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
        epilog="Example: autotune search --model bert --budget 16GB --trials 12 --time-budget 8m"
               "\nExit codes: 0 a winner was found, 2 a usage or input error, 3 no recipe "
               "reached the target, 130 interrupted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_task_args(p)
    add_integration_args(p)
    p.add_argument("--budget", default=None,
                   help="peak memory one device may use, e.g. 16GB (10^9), 16GiB (2^30), 512MiB; "
                   "a trial that exceeds it is infeasible (default: no limit)")
    p.add_argument("--space", default=None,
                   help="search-space YAML (default: search_spaces/<model>.yaml shipped with "
                   "autotune)")
    p.add_argument("--trials", type=int, default=None,
                   help=f"most trials to run, the baseline included (default {DEFAULT_TRIALS})")
    p.add_argument("--time-budget", default=None,
                   help="the whole search (start-up, trials, confirmation, results) ends "
                   "within this: 300, 90s, 5m, 1h (default "
                   f"{format_duration(DEFAULT_TIME_BUDGET_S)}; trials still running at a "
                   "phase's end are stopped at their next report)")
    p.add_argument("--max-trial-time", default=None,
                   help="training-time limit of one trial, e.g. 60s (default: the task's)")
    p.add_argument("--output", default=None,
                   help="where to write the best recipe (default: <results-dir>/best_recipe.yaml)")
    p.add_argument("--results-dir", default=None,
                   help="directory for every trial's recipe and measurements "
                   "(default: autotune_runs/<model>-<date>-<time>/)")
    _add_cluster_args(p)
    _add_confirm_args(p)
    _add_output_args(p)
    p.set_defaults(func=cmd_search)


def _add_output_args(p: argparse.ArgumentParser) -> None:
    """What the search prints while it runs, and where else it logs."""
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true",
                      help="print only the result (the verdict, or why there is none); "
                      "warnings still go to stderr")
    talk.add_argument("-v", "--verbose", action="store_true",
                      help="also print Ray's and Optuna's own log lines, and the path of each "
                      "failed trial's full error (the status then comes as plain lines)")
    p.add_argument("--logger", action="append", choices=sorted(LOGGERS), default=None,
                   metavar="NAME",
                   help="also log every trial (recipe as parameters, learning curve as "
                   "metrics) and the search's results to: "
                   + "; ".join(f"{k}: {v.what}" for k, v in sorted(LOGGERS.items()))
                   + ". Repeat it for several (choices: " + ", ".join(sorted(LOGGERS)) + ")")
    p.add_argument("--mlflow-uri", default=None, metavar="URI",
                   help="MLflow tracking URI for --logger mlflow, e.g. http://127.0.0.1:5000 "
                   "or sqlite:///mlflow.db (default: a SQLite store in the results directory)")


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
                   "quarter of --time-budget for these runs, and cuts those that would not "
                   "end within it)")
    p.add_argument("--confirm-seeds", type=int, default=DEFAULT_CONFIRM_SEEDS, metavar="K",
                   help=f"further seeds per confirmed recipe (default {DEFAULT_CONFIRM_SEEDS})")
    p.add_argument("--screen", action=argparse.BooleanOptionalAction, default=None,
                   help="first time a few seconds of training steps of each system "
                   "configuration of the space (precision, micro-batch, checkpointing, compile, "
                   "optimizer implementation, data loading, parallel mode), within 15%% of "
                   "--time-budget, and run the convergence trials on the fastest only "
                   "(default: on when the space has two or more system configurations)")
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
    """Parse the flags into a ``SearchRequest``, run ``autotune.search.search``, render; the
    exit code says how it ended (``autotune.cli._exit``)."""
    request, given = search_request(args)
    printer = _SearchPrinter(request, pick_mode(args.quiet, args.verbose, sys.stdout))
    try:
        outcome = search(request, printer, given)
    except SearchInterrupted as stop:
        printer.display.stop()
        print(f"\nautotune: search interrupted. The {stop.finished} trials finished in this run, "
              "and those that were running (as 'interrupted', with what they measured so far), "
              f"are in {stop.run_dir / TRIALS_FILE}. Resume the search with:\n"
              f"  {stop.resume_command}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        printer.display.stop()
    if not args.quiet:
        print(f"\nsearch finished: {len(outcome.records)} trials in "
              f"{format_duration(outcome.wall_seconds)}; results in {outcome.run_dir}/")
        print(leaderboard(outcome.records))
    if outcome.no_winner:
        print(f"autotune: no recipe reached the target: {outcome.no_winner}", file=sys.stderr)
        _print_report_path(outcome, args.quiet)
        return EXIT_NO_WINNER
    if not args.quiet:
        print()
    for line in verdict_lines(outcome):
        print(line)
    _print_report_path(outcome, args.quiet)
    return EXIT_OK


def _print_report_path(outcome: Any, quiet: bool) -> None:
    if outcome.report_path is not None and not quiet:
        print(f"wrote {outcome.report_path} (open it in a browser; autotune report "
              f"{outcome.run_dir} writes it again)")


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
    integration = integration_request(args, problems, parsed)
    given = {k: v for k, v in {
        "trials": args.trials, "time_budget_s": time_budget, "address": args.address,
        "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
        "max_concurrent_trials": args.max_concurrent_trials, "storage": args.storage,
        "loggers": args.logger, "mlflow_uri": args.mlflow_uri,
    }.items() if v is not None}
    given["verbose"] = args.verbose  # how this command talks, never the saved search's
    if integration.get("trainer_args"):
        options["baseline_args"] = integration.pop("trainer_args")
    request = SearchRequest(
        **integration, task_options=options, budget_bytes=budget, space=args.space,
        target=args.target, seed=args.seed, device=args.device,
        max_trial_seconds=max_trial, results_dir=args.results_dir, output=args.output,
        placement=args.placement, workers_per_trial=args.workers_per_trial,
        warm_start=args.warm_start, task_warm_start=args.task_warm_start, screen=args.screen,
        confirm_top=args.confirm, confirm_seeds=args.confirm_seeds, resume=args.resume,
        **given,
    )
    problems += request.problems()
    if problems:
        raise ConfigError("autotune search", problems)
    return request, given


class _SearchPrinter:
    """Renders the search's events: a line when a trial starts and when it ends, and the live
    status line (``SearchProgress`` follows the events; ``StatusDisplay`` draws)."""

    def __init__(self, request: SearchRequest, mode: str) -> None:
        self.trials = request.trials
        self.metric = "acc"
        self.verbose = request.verbose
        self.progress = SearchProgress(request.trials, request.time_budget_s)
        self.display = StatusDisplay(
            lambda: status_line(self.progress.snapshot(), self.metric), mode)

    @property
    def records(self) -> list[TrialRecord]:
        return self.progress.records

    def __call__(self, kind: str, payload: Any) -> None:
        self.progress.on_event(kind, payload)
        show = self.display.line
        if kind == "plan":
            self.trials, self.metric = payload.request.trials, payload.task.metric
            self.verbose = payload.request.verbose
            for line in plan_lines(payload):
                show(line)
            self.display.start()
        elif kind == "resumed":
            show(resumed_line(payload, payload["run_dir"]))
        elif kind == "started":
            show(started_line(payload, self.trials))
        elif kind == "progress":
            self.display.refresh()
        elif kind == "resources":
            show(resources_line(payload))
        elif kind == "confirming":
            show(confirming_line(payload))
        elif kind == "screening":
            show(screening_line(payload))
        elif kind == "screened_one":
            show(screened_line(payload))
        elif kind == "screened":
            for line in screening_table(payload["records"], payload["decisions"],
                                        payload.get("warm_start")).splitlines():
                show(line)
        elif kind == "finished":
            show(finished_line(payload, self.trials, summarize(self.records).best,
                               self.metric))
            if self.verbose and payload.error_file:
                show(f"      full error: {payload.error_file}")
        elif kind == "warning":
            show(f"warning: {payload}", err=True)
