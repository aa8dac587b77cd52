"""A whole search from Python: the same call the ``autotune search`` command makes.

Run it from the repository root (a few seconds on a CPU)::

    python -m examples.search_from_python

It searches the example task (``examples/custom_task.py``) over ``examples/custom_space.yaml``,
prints each trial as it ends, and then the winner, its speedup over the baseline and the files
the search wrote.
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

from autotune.search import SearchInterrupted, SearchRequest, search


def show(kind: str, payload: Any) -> None:
    """Progress: ``payload`` is a ``TrialRecord`` for ``started`` and ``finished``."""
    if kind == "finished":
        tta = f"{payload.tta_seconds:.2f}s" if payload.tta_seconds else "-"
        print(f"trial {payload.trial}: {payload.status}, time-to-target {tta}")


def main(results_dir: str | None = None) -> int:
    request = SearchRequest(
        model="examples.custom_task:make_task", space="examples/custom_space.yaml",
        budget_bytes=2 * 10**9, trials=4, time_budget_s=120, confirm_top=1, confirm_seeds=1,
        results_dir=results_dir or tempfile.mkdtemp(prefix="autotune_example_") + "/run",
    )
    try:
        outcome = search(request, on_event=show)
    except SearchInterrupted as stop:
        print(f"interrupted; resume with: {stop.resume_command}")
        return 130
    if outcome.summary.best is None:
        print(outcome.no_winner)
        return 2
    best = outcome.summary.best
    print(f"winner: trial {best.record.trial}, median time-to-target {best.tta_seconds:.2f}s "
          f"over seeds {best.seeds}; speedup {outcome.summary.speedup_text()}")
    print(f"best recipe: {outcome.best_recipe_path}; every trial: {outcome.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
