"""``autotune train``, ``autotune export`` and ``autotune estimate``: flags in, the Python
API's result rendered."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from autotune import export, objective
from autotune.cli._exit import EXIT_NO_WINNER
from autotune.errors import UserError
from autotune.estimate import estimate_space
from autotune.knobs import unsupported_reason
from autotune.memory import SAFETY_MARGIN
from autotune.recipe import ZERO_MODES, Recipe
from autotune.report import estimate_table
from autotune.results import write_text
from autotune.tasks import load_task
from autotune.train import TrialLimits, pick_device, run_trial
from autotune.units import format_bytes, parse_bytes, parse_duration


def add_task_args(p: argparse.ArgumentParser) -> None:
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


def add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="train once with a recipe file and report its time-to-target",
        description=(
            "Apply a recipe (a best_recipe.yaml written by a search, or a plain recipe file) "
            "through the same code path as a search trial, and compare the time-to-target "
            "measured now with the one the file claims."
        ),
        epilog="Example: autotune train --recipe autotune_runs/bert-.../best_recipe.yaml "
        "--model bert",
    )
    p.add_argument("--recipe", required=True, help="recipe YAML file")
    add_task_args(p)
    p.add_argument("--budget", default=None, help="peak memory limit, e.g. 16GB (default: none)")
    p.add_argument("--max-trial-time", default=None,
                   help="training-time limit, e.g. 120s (default: the task's)")
    p.set_defaults(func=cmd_train)


def add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export", help="write a recipe in the form another tool takes (DeepSpeed, torchrun, HF)",
        description=(
            "Write a recipe (a best_recipe.yaml written by a search, or a plain recipe file) in "
            "the format a training tool takes: deepspeed, a DeepSpeed config (ZeRO recipes "
            "only); torchrun, the launch command for the recipe's parallelism; hf, keyword "
            "arguments for transformers.TrainingArguments (with a DeepSpeed config beside "
            "them for a ZeRO recipe); accelerate, a config file for accelerate launch "
            "(mixed precision, processes, the DeepSpeed or FSDP plugin). Knobs a format "
            "cannot express are named in a warning."
        ),
        epilog="Example: autotune export autotune_runs/bert-.../best_recipe.yaml --format hf",
    )
    p.add_argument("recipe", metavar="RECIPE", help="recipe YAML file")
    p.add_argument("--format", required=True,
                   choices=["deepspeed", "torchrun", "hf", "accelerate"],
                   help="deepspeed: ds_config.json; torchrun: the launch command; hf: "
                   "TrainingArguments keyword arguments; accelerate: accelerate_config.yaml "
                   "for accelerate launch --config_file")
    p.add_argument("--output", default=None,
                   help="file to write (default: beside RECIPE, ds_config.json, "
                   "hf_training_args.yaml/.json or accelerate_config.yaml; torchrun prints "
                   "the command and writes it only with --output)")
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


def add_estimate(sub: Any) -> None:
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


def task_options(pairs: list[str]) -> dict[str, Any]:
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
    return load_task(args.model, device.type, task_options(args.task_option)), device


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
    print(f"training {args.model} with {recipe.describe()} to {task.metric} "
          f"{objective.comparison(task.higher_is_better)} {limits.target}")

    def progress(point: dict[str, Any]) -> None:
        if not point.get("final"):
            print(f"  {point['train_seconds']:6.1f}s  {task.metric} {point['last_metric']:.4f}",
                  flush=True)

    result = run_trial(task, recipe, limits, report=progress, device=str(device))
    if result.status != objective.REACHED:
        print(f"no time-to-target: {result.status}: {result.message}")
        return EXIT_NO_WINNER
    one_time = "".join(
        f", {what} {seconds:.1f}s" for what, seconds in
        (("of it compiling", result.compile_seconds),
         ("before it starting the DataLoader", result.loader_start_seconds)) if seconds >= 0.05)
    print(f"time-to-target {result.tta_seconds:.1f}s (peak memory "
          f"{format_bytes(result.peak_memory_bytes)}, {result.steps} steps{one_time})")
    for note in result.inactive_knobs:
        print(f"  no effect: {note}")
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
    task = load_task(args.model, device, task_options(args.task_option))
    est = estimate_space(task, args.model, args.space, workers, budget, device)
    f = est.fixed
    print(f"predicted peak memory per device of {args.model} on {device} (nothing trains): "
          f"space {est.space_source}; optimizer {f.optimizer}, accumulation_steps "
          f"{f.accumulation_steps}, prune_ratio {f.prune_ratio:g}, weight_sparsity "
          f"{f.weight_sparsity:g} (the space's most memory-hungry values)", flush=True)
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
    if args.format == "accelerate":
        return _export_accelerate(args, recipe, beside)
    return _export_hf(args, recipe, beside)


def _export_accelerate(args: argparse.Namespace, recipe: Recipe, beside: Path) -> int:
    output = Path(args.output) if args.output else beside / "accelerate_config.yaml"
    config = export.accelerate_config(recipe, device_type=args.device)
    notes = export.accelerate_unsupported(recipe)
    write_text(output, export.accelerate_yaml(config, recipe, notes, args.recipe))
    print(f"wrote {output} (Accelerate config: {recipe.describe()})")
    print(f"launch with: accelerate launch --config_file {output} your_script.py")
    for line in notes:
        print(f"note: {line}")
    return 0


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
