"""``autotune search --trainer`` and ``--function``: the flags that name a user's own training
(a Hugging Face ``Trainer`` factory, a training function: ``autotune.integrations``) instead of
an autotune task, and their metric, target and direction."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from autotune.units import parse_duration


def add_integration_args(p: argparse.ArgumentParser) -> None:
    """``--trainer``/``--function`` and what they need besides ``--target``."""
    own = p.add_mutually_exclusive_group()
    own.add_argument("--trainer", default=None, metavar="PKG.MOD:FN",
                     help="tune your Hugging Face Trainer instead of --model: FN takes the "
                     "TrainingArguments autotune builds for each recipe and returns your "
                     "transformers.Trainer (model, datasets, collator, compute_metrics yours); "
                     "needs --metric and --target")
    own.add_argument("--function", default=None, metavar="PKG.MOD:FN",
                     help="tune your own training function instead of --model: FN(recipe, ctx) "
                     "trains with the recipe (autotune.configure helps) and calls "
                     "ctx.report(metric) after each evaluation; needs --metric and --target")
    p.add_argument("--metric", default=None,
                   help="with --trainer/--function: the metric to reach, as reported (the "
                   "Trainer's evaluation names it eval_<name>, e.g. eval_accuracy)")
    p.add_argument("--direction", choices=["max", "min"], default=None,
                   help="with --trainer/--function: max if higher --metric is better, min if "
                   "lower (default: min for names with loss, perplexity, error; else max)")
    p.add_argument("--eval-every", default=None, metavar="SECONDS",
                   help="with --trainer/--function: training seconds between evaluations, the "
                   "resolution of time-to-target (default 2s for a Trainer, 1s for a function)")
    p.add_argument("--trainer-args", default=None, metavar="FILE",
                   help="with --trainer: your own TrainingArguments as a YAML or JSON mapping "
                   "of keyword arguments (the form `autotune export --format hf` writes); the "
                   "baseline every speedup is measured against (default: TrainingArguments' "
                   "defaults)")


def integration_request(args: argparse.Namespace, problems: list[str],
                        parsed: Callable[..., Any]) -> dict[str, Any]:
    """The ``SearchRequest`` fields these flags give (``model`` included), with their
    problems appended to ``problems`` (``parsed`` parses a value, collecting its error)."""
    eval_every = parsed(lambda v: parse_duration(v, what="--eval-every"), args.eval_every)
    out: dict[str, Any] = {"model": args.model, "metric": args.metric,
                           "direction": args.direction, "eval_every_s": eval_every}
    for kind in ("trainer", "function"):
        spec = getattr(args, kind)
        if spec:
            out.update(model=spec, integration=kind)
    if args.trainer_args:
        if not args.trainer:
            problems.append("--trainer-args applies to --trainer only")
        else:
            kwargs = _read_mapping(args.trainer_args, problems)
            if kwargs is not None:
                out["trainer_args"] = kwargs
    return out


def _read_mapping(path: str, problems: list[str]) -> dict[str, Any] | None:
    """The YAML/JSON mapping in ``path`` (kept in the search's settings, so that a resumed
    search measures the same baseline), or None with the problem appended."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        problems.append(f"--trainer-args {path}: cannot read it as YAML or JSON ({exc})")
        return None
    if not isinstance(data, dict):
        problems.append(f"--trainer-args {path}: must hold a mapping of TrainingArguments "
                        f"keyword arguments, got {type(data).__name__}")
        return None
    return data
