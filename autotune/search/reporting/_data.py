"""Everything a report shows, read from a run directory: finished, or still being written.

A search writes its files as it goes (``autotune.results.rundir``): ``settings.json`` and
``space.yaml`` first, ``search.yaml`` (task, metric, target, direction) when the plan is made
and again at the end, one ``trials.jsonl`` line per ended trial, the Optuna study as it
proposes. ``load_run`` reads whatever is there now, so a report of a running search shows the
trials ended so far; a torn last line of ``trials.jsonl`` is skipped with a note.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autotune import objective
from autotune.errors import UserError
from autotune.recipe import Recipe
from autotune.results import BEST_FILE, SEARCH_FILE, RunDirectory, TrialRecord
from autotune.search.documents import library_versions
from autotune.search.winner import Candidate, Summary, candidates, summarize

NOT_MEASURED_TEXT = "not measured (a CPU search measures it only under --budget)"
"""A trial's peak memory in words when it was not measured (``autotune.memory.NOT_MEASURED``:
a CPU search without a memory budget); the CLI's verdict and the report both say it."""


@dataclass(frozen=True)
class RunData:
    """One run directory's results as the report needs them (see the module docstring)."""

    path: Path
    settings: dict[str, Any]
    """The search's ``SearchRequest`` as saved in ``settings.json``."""
    sessions: list[dict[str, float]]
    """Each run of the search (a resumed search has several): ``started_at``, ``ended_at``."""
    records: list[TrialRecord]
    """Every record so far, confirmation runs included, interrupted trials left out."""
    summary: Summary
    """The winner so far (``autotune.search.winner``), the baseline and the speedup."""
    metric: str
    target: float | None
    """None when neither ``search.yaml`` nor the settings say it yet."""
    higher_is_better: bool
    search: dict[str, Any]
    """``search.yaml`` as written (empty when not written yet)."""
    versions: dict[str, str]
    versions_source: str
    """Where ``versions`` come from: the search's ``best_recipe.yaml``, or this environment."""
    space_text: str
    notes: list[str] = field(default_factory=list)
    """What the reader should know about missing or skipped data (a torn line, no target)."""

    @property
    def finished(self) -> bool:
        """The last run of the search ended (a running search, or one whose driver was
        killed, has no end yet)."""
        return bool(self.sessions) and self.sessions[-1].get("ended_at") is not None

    @property
    def budget_bytes(self) -> int | None:
        return self.settings.get("budget_bytes")

    @property
    def model(self) -> str:
        return str(self.settings.get("model", "?"))

    @property
    def candidates(self) -> list[Candidate]:
        return candidates(self.records)

    def comparison(self) -> str:
        """``>=`` or ``<=``: how the metric must compare with the target."""
        return objective.comparison(self.higher_is_better)

    def target_text(self) -> str:
        if self.target is None:
            return f"{self.metric} target not known yet"
        return f"{self.metric} {self.comparison()} {self.target:g}"

    def search_seconds(self, when: float) -> float:
        """Seconds of search time at wall-clock ``when``: the time inside the search's runs
        before it (a resumed search's pause between runs does not count)."""
        spent = 0.0
        for s in self.sessions:
            start = s["started_at"]
            end = s.get("ended_at") or max(when, start)
            if when >= end:
                spent += end - start
            elif when > start:
                spent += when - start
        return spent


def load_run(path: str | Path) -> RunData:
    """The results in run directory ``path``; ``UserError`` when it is not one."""
    run_dir = RunDirectory(path)
    if not run_dir.path.is_dir():
        what = "is not a folder" if run_dir.path.exists() else "does not exist"
        raise UserError(
            f"{run_dir.path} {what}; give the results directory of a search (the folder that "
            "autotune search printed, e.g. autotune_runs/bert-20261128-232451), which holds "
            "settings.json and trials.jsonl")
    settings = run_dir.load_settings()  # UserError naming the file when it is missing
    notes: list[str] = []
    records = [r for r in run_dir.records(notes.append) if r.status != objective.INTERRUPTED]
    search = _read_yaml(run_dir.path / SEARCH_FILE)
    task = search.get("task") or {}
    target = task.get("target", settings.get("target"))
    if target is None:
        notes.append("the target is not known yet (search.yaml is written when the search "
                     "starts its trials); no target line is drawn")
    best = _read_yaml(run_dir.path / BEST_FILE)
    versions, versions_source = best.get("versions"), f"{BEST_FILE} (the search's)"
    if not versions:
        versions = library_versions()
        versions_source = "this environment (where the report was written)"
    space = run_dir.space_path
    return RunData(
        path=run_dir.path, settings=settings, sessions=run_dir.sessions(), records=records,
        summary=summarize(records), metric=str(task.get("metric", "metric")),
        target=None if target is None else float(target),
        higher_is_better=bool(task.get("higher_is_better", True)), search=search,
        versions=dict(versions), versions_source=versions_source,
        space_text=space.read_text() if space.exists() else "", notes=notes,
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    """A YAML document of the run directory, or ``{}`` when it is absent or half-written."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_recipe(recipe: dict[str, Any] | None) -> str:
    """A recipe in the CLI's short form (only what differs from the default, plus the main
    knobs); a recipe this autotune cannot read as its knobs."""
    if not recipe:
        return "(not a valid recipe)"
    try:
        return Recipe.from_dict(recipe).describe()
    except Exception:  # noqa: BLE001 - a record of another version still shows
        default = Recipe().to_dict()
        return " ".join(f"{k}={v}" for k, v in recipe.items()
                        if k in _MAIN_KNOBS or default.get(k, v) != v or k not in default)


_MAIN_KNOBS = ("precision", "batch_size", "optimizer", "lr")
"""Knobs a recipe's short form always shows (``Recipe.describe``)."""


def stamp(when: float | None) -> str:
    """A wall-clock time as local ``YYYY-MM-DD HH:MM:SS``."""
    if when is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
