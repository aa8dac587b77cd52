"""``autotune report RUN_DIR``: write ``report.html`` and ``trials.csv`` into a run directory
(``autotune.search.reporting``), of a finished search or of one still running."""

from __future__ import annotations

import argparse
from typing import Any

from autotune.search.reporting import write_report
from autotune.units import format_bytes


def add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="write report.html (plots) and trials.csv for a search's results",
        description=(
            "Write report.html (one self-contained page that opens offline: the verdict, the "
            "leaderboard, learning curves, time-to-target against peak memory, the "
            "optimisation history, parameter importances, the machine and settings) and "
            "trials.csv (one row per trial) into a search's results directory. Works on a "
            "finished search and on one still running (from the trials recorded so far); a "
            "search writes both itself when it ends."
        ),
        epilog="Example: autotune report autotune_runs/bert-20261128-232451",
    )
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="the results directory of a search (it holds settings.json)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    files = write_report(args.run_dir)
    print(f"wrote {files.html} ({format_bytes(files.html.stat().st_size)}; {files.trials} "
          f"trials, plots: {', '.join(files.plots) or 'none yet'})")
    print(f"wrote {files.csv}")
    return 0
