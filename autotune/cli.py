"""The ``autotune`` command: the only module that parses arguments and prints.

A user mistake (``UserError``) prints one paragraph and exits with code 2; Ctrl-C exits 130
after saying where the results measured so far are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from autotune import __version__, export, objective
from autotune.errors import ConfigError, UserError
from autotune.estimate import estimate_space
from autotune.knobs import unsupported_reason
from autotune.memory import SAFETY_MARGIN
from autotune.recipe import BASELINE_NOTE, ZERO_MODES, Recipe
from autotune.report import (
    confirming_line,
    estimate_table,
    finished_line,
    leaderboard,
    plan_lines,
    resumed_line,
    started_line,
    verdict_lines,
)
from autotune.results import TRIALS_FILE, TrialRecord, write_text
from autotune.search import (
    DEFAULT_TIME_BUDGET_S,
    DEFAULT_TRIALS,
    SearchInterrupted,
    SearchRequest,
    search,
    summarize,
)
from autotune.search.settings import DEFAULT_CONFIRM_SEEDS, DEFAULT_CONFIRM_TOP
from autotune.tasks import load_task
from autotune.train import TrialLimits, pick_device, run_trial
from autotune.units import format_bytes, format_duration, parse_bytes, parse_duration

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USER_ERROR
    # A user task (--model package.module:function) imports from where the command runs, as
    # with `python -m`; the console script alone would not look there.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"autotune: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\nautotune: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--budget -1GB`` reaches the validator (which explains the rule) instead of argparse
    mistaking ``-1GB`` for a flag."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and token[:1] == "-" \
                and token[1:2].isdigit():
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autotune",
        description=(
            "Find the training recipe (precision, batch size, accumulation, pruning, warmup, "
            "optimizer, learning rate, parallelism) that reaches a model's target accuracy in "
            "the least training time without exceeding a memory budget. Short real trials run "
            "as Ray Tune trials; Optuna proposes the next recipe."
        ),
        epilog="Example: autotune search --model bert --budget 16GB",
    )
    parser.add_argument("--version", action="version", version=f"autotune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_search(sub)
    _add_train(sub)
    _add_export(sub)
    _add_estimate(sub)
    return parser


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="bert",
        help="task to tune: a built-in (bert, mnist) or your own as package.module:function "
        "returning an autotune.tasks.Task (default: bert)",
    )
    p.add_argument(
        "--task-option", action="append", default=[], metavar="KEY=VALUE",
        help="keyword argument for the task's factory, repeatable (e.g. size=small for bert)",
    )
    p.add_argument("--target", type=float, default=None,
                   help="validation metric value to reach (default: the task's own target)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for the sampler and every trial's weights and data order (default 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="device for training (default: a GPU where there is one, else the CPU)")


def _add_search(sub: Any) -> None:
    p = sub.add_parser(
        "search", help="search for the fastest recipe (the main command)",
        description=(
            "Run short real training trials, proposed by Optuna and run by Ray Tune, and report "
            "the recipe with the shortest time-to-accuracy (training seconds to reach the "
            "target metric) whose peak memory fits the budget. The baseline recipe ("
            + BASELINE_NOTE + ") is always the first trial; every speedup is measured against "
            "it. Writes every trial to the results directory as it ends, and the best recipe "
            "to best_recipe.yaml."
        ),
        epilog="Example: autotune search --model bert --budget 16GB --trials 12 --time-budget 8m",
    )
    _add_task_args(p)
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
    p.add_argument("--confirm", type=int, default=DEFAULT_CONFIRM_TOP, metavar="N",
                   help="after the search, run the N fastest recipes (and the baseline) again "
                   "with --confirm-seeds more seeds and pick the lowest median time-to-target "
                   f"(default {DEFAULT_CONFIRM_TOP}; 0 turns it off); the search keeps a "
                   "quarter of --time-budget for these runs")
    p.add_argument("--confirm-seeds", type=int, default=DEFAULT_CONFIRM_SEEDS, metavar="K",
                   help=f"further seeds per confirmed recipe (default {DEFAULT_CONFIRM_SEEDS})")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the interrupted search whose results are in DIR, with its "
                   "settings: finished trials are not run again and the sampler learns from "
                   "them (--trials, --time-budget, --address and the resource flags may be "
                   "given again to change them)")
    p.add_argument("--workers-per-trial", type=int, default=None,
                   help="workers of a trial whose recipe is parallel (ddp, fsdp, zero1-3), one "
                   "per GPU on a GPU machine (default: the GPUs of this machine; on a CPU, 2 "
                   "when the space searches parallel modes, else 1)")
    p.set_defaults(func=cmd_search)


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="train once with a recipe file and report its time-to-accuracy",
        description=(
            "Apply a recipe (a best_recipe.yaml written by a search, or a plain recipe file) "
            "through the same code path as a search trial, and compare the time-to-accuracy "
            "measured now with the one the file claims."
        ),
        epilog="Example: autotune train --recipe autotune_runs/bert-.../best_recipe.yaml "
        "--model bert",
    )
    p.add_argument("--recipe", required=True, help="recipe YAML file")
    _add_task_args(p)
    p.add_argument("--budget", default=None, help="peak memory limit, e.g. 16GB (default: none)")
    p.add_argument("--max-trial-time", default=None,
                   help="training-time limit, e.g. 120s (default: the task's)")
    p.set_defaults(func=cmd_train)


def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export", help="write a recipe in the form another tool takes (DeepSpeed, torchrun, HF)",
        description=(
            "Write a recipe (a best_recipe.yaml written by a search, or a plain recipe file) in "
            "the format a training tool takes: deepspeed, a DeepSpeed config (ZeRO recipes "
            "only); torchrun, the launch command for the recipe's parallelism; hf, keyword "
            "arguments for transformers.TrainingArguments (with a DeepSpeed config beside "
            "them for a ZeRO recipe). Knobs a format cannot express are named in a warning."
        ),
        epilog="Example: autotune export autotune_runs/bert-.../best_recipe.yaml --format hf",
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe YAML file")
    p.add_argument("--format", required=True, choices=["deepspeed", "torchrun", "hf"],
                   help="deepspeed: ds_config.json; torchrun: the launch command; hf: "
                   "TrainingArguments keyword arguments")
    p.add_argument("--output", default=None,
                   help="file to write (default: beside RECIPE, ds_config.json or "
                   "hf_training_args.yaml/.json; torchrun prints the command and writes it "
                   "only with --output)")
    p.add_argument("--hf-format", choices=["yaml", "json"], default=None,
                   help="file format of --format hf (default yaml, with a comment per setting)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="device type the exported run trains on (default cuda); cpu targets "
                   "DeepSpeed's CPU accelerator (no fp16) and adds use_cpu for hf")
    p.add_argument("--script", default=None,
                   help="training script the torchrun command launches (default train.py)")
    p.add_argument("--nnodes", type=int, default=None,
                   help="nodes the torchrun command spreads the recipe's workers over (default 1)")
    p.set_defaults(func=cmd_export)


def _add_estimate(sub: Any) -> None:
    p = sub.add_parser(
        "estimate", help="predict the peak memory of the space's recipes, without training",
        description=(
            "Predict the peak memory per device of every combination of the search space's "
            "precision, batch size and parallel mode (and activation checkpointing and "
            "offload where the space varies them), for each worker count, and mark which fit "
            "the budget. Nothing trains: one training step per model and micro-batch is "
            "traced on fake tensors, and the parallel mode's sharding is computed. The other "
            "knobs take their most memory-hungry values in the space (e.g. Adam over SGD)."
        ),
        epilog="Example: autotune estimate --model bert --budget 16GB --device cuda",
    )
    p.add_argument(
        "--model", default="bert",
        help="task: a built-in (bert, mnist) or your own as package.module:function "
        "returning an autotune.tasks.Task (default: bert)",
    )
    p.add_argument(
        "--task-option", action="append", default=[], metavar="KEY=VALUE",
        help="keyword argument for the task's factory, repeatable (e.g. size=base for bert)",
    )
    p.add_argument("--budget", default=None,
                   help="peak memory one device may use, e.g. 16GB (10^9), 16GiB (2^30); "
                   "without it the table only predicts")
    p.add_argument("--space", default=None,
                   help="search-space YAML (default: search_spaces/<model>.yaml; for a model "
                   "without one, fp32/bf16/fp16 x half, once and twice the task's batch size)")
    p.add_argument("--workers", type=int, action="append", default=None, metavar="N",
                   help="workers of the parallel modes (ddp, fsdp, zero1-3), repeatable "
                   "(default: this machine's GPU count for cuda, at least 2; 2 for cpu)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="device the prediction is for; the task is built for it (bert is "
                   "BERT-base on cuda, tiny on cpu). No GPU is needed to predict for cuda "
                   "(default: a GPU where there is one, else the CPU)")
    p.set_defaults(func=_cmd_estimate)


# -- commands -------------------------------------------------------------------------------


def _task_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--task-option must be KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _load_task(args: argparse.Namespace) -> Any:
    device = pick_device(args.device)
    print(f"loading task {args.model!r} on {device.type} ...", flush=True)
    return load_task(args.model, device.type, _task_options(args.task_option)), device


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
    options = parsed(_task_options, args.task_option) or {}
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


def cmd_train(args: argparse.Namespace) -> int:
    """Train once with a recipe file through the trial's code path; compare with its claim."""
    recipe = Recipe.load(args.recipe)
    claimed = _claimed_tta(Path(args.recipe))
    task, device = _load_task(args)
    reason = unsupported_reason(recipe, device.type)
    if reason:
        raise UserError(f"{args.recipe}: this recipe cannot run on {device.type}: {reason}")
    limits = TrialLimits.for_task(
        task, target=args.target, seed=args.seed,
        max_train_seconds=parse_duration(args.max_trial_time, what="--max-trial-time")
        if args.max_trial_time else None,
        budget_bytes=parse_bytes(args.budget) if args.budget else None,
    )
    print(f"training {args.model} with {recipe.describe()} to {task.metric} >= {limits.target}")

    def progress(point: dict[str, Any]) -> None:
        if not point.get("final"):
            print(f"  {point['train_seconds']:6.1f}s  {task.metric} {point['last_metric']:.4f}",
                  flush=True)

    result = run_trial(task, recipe, limits, report=progress, device=str(device))
    if result.status != objective.REACHED:
        print(f"no time-to-target: {result.status}: {result.message}")
        return 1
    print(f"time-to-target {result.tta_seconds:.1f}s (peak memory "
          f"{format_bytes(result.peak_memory_bytes)}, {result.steps} steps)")
    if claimed:
        print(f"the recipe file claims {claimed:.1f}s: ratio measured/claimed "
              f"{result.tta_seconds / claimed:.2f}")
    return 0


def _claimed_tta(path: Path) -> float | None:
    """The time-to-target a ``best_recipe.yaml`` reports (None for a plain recipe file)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return (doc.get("measured") or {}).get("tta_seconds") if isinstance(doc, dict) else None


def _cmd_estimate(args: argparse.Namespace) -> int:
    """Print the predicted peak memory of the space's combinations (``autotune.estimate``)."""
    budget = parse_bytes(args.budget) if args.budget is not None else None
    workers = args.workers or []
    if any(n < 1 for n in workers):
        raise UserError(f"--workers must be >= 1, got {min(workers)}")
    device = pick_device(args.device).type
    if not workers:
        workers = [max(2, torch.cuda.device_count())] if device == "cuda" else [2]
    task = load_task(args.model, device, _task_options(args.task_option))
    est = estimate_space(task, args.model, args.space, workers, budget, device)
    f = est.fixed
    print(f"predicted peak memory per device of {args.model} on {device} (nothing trains): "
          f"space {est.space_source}; optimizer {f.optimizer}, accumulation_steps "
          f"{f.accumulation_steps}, prune_ratio {f.prune_ratio:g} (the space's most "
          "memory-hungry values)", flush=True)
    print(estimate_table(est.rows, budget))
    if budget is not None:
        print(f"{est.fitting} of {est.runnable} combinations fit the budget of {args.budget} "
              f"({format_bytes(budget)}) per device: predicted peak x {1 + SAFETY_MARGIN:g} "
              "(safety margin) within it. A search launches no recipe predicted not to fit.")
    return 0


_EXPORT_ONLY = {"hf_format": ("--hf-format", "hf"), "script": ("--script", "torchrun"),
                "nnodes": ("--nnodes", "torchrun")}


def cmd_export(args: argparse.Namespace) -> int:
    """Write (or print) the recipe in one tool's format; see ``autotune.export``."""
    for attr, (flag, fmt) in _EXPORT_ONLY.items():
        if getattr(args, attr) is not None and args.format != fmt:
            raise UserError(f"{flag} applies only to --format {fmt}; got --format {args.format}")
    recipe = Recipe.load(args.recipe)
    beside = Path(args.recipe).parent
    if args.format == "deepspeed":
        output = Path(args.output) if args.output else beside / "ds_config.json"
        config = export.deepspeed_config(recipe, device_type=args.device)
        write_text(output, json.dumps(config, indent=2) + "\n")
        print(f"wrote {output} (DeepSpeed config: {recipe.describe()})")
        print("launch it with:")
        print(export.torchrun_command(recipe, deepspeed_config_path=str(output)), end="")
        return 0
    if args.format == "torchrun":
        nnodes = 1 if args.nnodes is None else args.nnodes
        command = export.torchrun_command(recipe, script=args.script or "train.py", nnodes=nnodes)
        print(command, end="")
        if args.output:
            write_text(Path(args.output), command)
            print(f"wrote {args.output}")
        if recipe.parallelism in ZERO_MODES:
            print("the DeepSpeed config it names: autotune export "
                  f"{args.recipe} --format deepspeed --output ds_config.json")
        return 0
    return _export_hf(args, recipe, beside)


def _export_hf(args: argparse.Namespace, recipe: Recipe, beside: Path) -> int:
    hf_format = args.hf_format or "yaml"
    output = Path(args.output) if args.output else beside / f"hf_training_args.{hf_format}"
    ds_path = None
    if recipe.parallelism in ZERO_MODES:
        ds_path = output.parent / "ds_config_hf.json"
        config = export.deepspeed_config(recipe, device_type=args.device, with_scheduler=False)
        write_text(ds_path, json.dumps(config, indent=2) + "\n")
    kwargs = export.hf_training_arguments(
        recipe, device_type=args.device, deepspeed_config_path=str(ds_path) if ds_path else None)
    unsupported = export.hf_unsupported(recipe)
    if hf_format == "json":
        text = json.dumps(kwargs, indent=2) + "\n"
    else:
        text = export.hf_yaml(kwargs, recipe, unsupported, args.recipe)
    write_text(output, text)
    if ds_path:
        print(f"wrote {ds_path} (DeepSpeed config for the Trainer: optimizer and ZeRO; the "
              "Trainer keeps the schedule)")
    print(f"wrote {output} (transformers.TrainingArguments keyword arguments: "
          f"{recipe.describe()})")
    for line in unsupported:
        print(f"warning: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
