"""Results a person can look at: ``report.html`` and ``trials.csv`` in a run directory.

``write_report(run_dir)`` reads what the run directory holds now (``_data``: a finished search,
or one still running, from the trials recorded so far) and writes, atomically:

- ``report.html``: one self-contained page (``_page``; plotly.js inline, opens offline) with
  the verdict, the leaderboard, the screening of system configurations, learning curves,
  time-to-target against peak memory with the budget and the Pareto front, the optimisation
  history, Optuna's parameter importances
  (``_figures``), and the machine, versions and settings;
- ``trials.csv``: one flat row per trial (``_table``).

``autotune report RUN_DIR`` calls it; so does every search when it ends
(``write_report_after_search``, which turns a failure into a warning, never a lost search).
It lives in ``search`` because the verdict is the search's own (``search.winner``) and only
``search`` reads the Optuna study; plotly and optuna are imported only when a report is made.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.results import write_text
from autotune.search.reporting._data import RunData, load_run
from autotune.search.reporting._figures import Plot, all_plots, pareto_front
from autotune.search.reporting._page import render
from autotune.search.reporting._table import trials_csv

REPORT_FILE = "report.html"
CSV_FILE = "trials.csv"


@dataclass(frozen=True)
class ReportFiles:
    """What ``write_report`` wrote and what it showed."""

    html: Path
    csv: Path
    trials: int
    """Records in the report (confirmation runs included)."""
    plots: tuple[str, ...]
    """Keys of the plots drawn (``Plot.key``); a plot with only a note is not among them."""
    seconds: float
    """Time it took to read the run and write both files."""


def write_report(path: str | Path) -> ReportFiles:
    """Write ``report.html`` and ``trials.csv`` into run directory ``path`` from what it holds
    now. ``UserError`` when ``path`` is not a run directory or a file cannot be written."""
    import plotly.offline  # heavy optional import: only a report needs plotly.js

    start = time.perf_counter()
    run = load_run(path)
    plots = all_plots(run)
    html = run.path / REPORT_FILE
    csv = run.path / CSV_FILE
    write_text(csv, trials_csv(run.records))
    write_text(html, render(run, plotly.offline.get_plotlyjs(), plots))
    return ReportFiles(html=html, csv=csv, trials=len(run.records),
                       plots=tuple(p.key for p in plots if p.figure is not None),
                       seconds=time.perf_counter() - start)


def write_report_after_search(path: Path, emit: Callable[[str, Any], None]) -> None:
    """``write_report`` at the end of a search: a failure is reported as a ``("warning", ...)``
    event naming the command that retries, so that it never costs the search's results."""
    try:
        write_report(path)
    except Exception as exc:  # noqa: BLE001 - the search's results matter more than its report
        emit("warning", f"{REPORT_FILE} not written ({type(exc).__name__}: {exc}); the results "
                        f"are in {path}; write it later with: autotune report {path}")


__all__ = [
    "CSV_FILE",
    "REPORT_FILE",
    "Plot",
    "ReportFiles",
    "RunData",
    "load_run",
    "pareto_front",
    "trials_csv",
    "write_report",
    "write_report_after_search",
]
