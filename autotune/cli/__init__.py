"""The ``autotune`` command: the only code that parses arguments and prints.

``autotune search`` (``_search``) and the tools around it, ``train``, ``export`` and
``estimate`` (``_tools``) and ``report`` (``_report``), each parse flags, call the Python API
(``autotune.search``, ``autotune.train``, ``autotune.export``, ``autotune.estimate``,
``autotune.search.reporting``) and render its result. Exit codes
(``autotune.cli._exit``): 0 done (a winner found); a user mistake (``UserError``, or a flag
argparse refuses) prints one paragraph and exits with 2; a search or training run in which
nothing reached the target exits with 3; Ctrl-C exits 130 after saying where the results
measured so far are.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from autotune import __version__
from autotune.cli._exit import EXIT_INTERRUPTED, EXIT_NO_WINNER, EXIT_USER_ERROR
from autotune.cli._report import add_report
from autotune.cli._search import add_search
from autotune.cli._tools import add_estimate, add_export, add_train
from autotune.errors import UserError

__all__ = ["EXIT_INTERRUPTED", "EXIT_NO_WINNER", "EXIT_USER_ERROR", "build_parser", "main"]


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
    add_search(sub)
    add_train(sub)
    add_export(sub)
    add_estimate(sub)
    add_report(sub)
    return parser

