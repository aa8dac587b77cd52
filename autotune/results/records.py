"""The trial record: what one trial of a search measured, typed, versioned, and JSON-round-trip.

A search appends one ``TrialRecord`` per ended trial to ``trials.jsonl`` (one JSON object a
line, ``RunDirectory.append``). Every record carries ``schema``; a reader refuses a schema it
does not know with a clear message instead of misreading renamed fields. Unknown keys of a
known schema (written by a newer autotune of the same schema) are ignored.

The measurement fields are those of ``autotune.train.TrialResult`` (a test checks that every
field of it has a place here), filled by name from a trial's reported result, so a new
measurement only has to be added in the two dataclasses, not in the code that copies it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from autotune import objective
from autotune.errors import UserError

SCHEMA_VERSION = 1
"""Version of the record format; bump it when a field is renamed or changes meaning."""


class RecordFormatError(UserError):
    """A results file written in a format this autotune cannot read."""


@dataclass
class TrialRecord:
    """One ended trial: its identity and role in the search, its recipe, and what it measured."""

    trial: int
    """Number of the trial in this search, in the order trials started (1 = the baseline)."""
    status: str
    """An ``autotune.objective`` state: reached, not_reached, stopped, infeasible, ..."""
    score: float | None = None
    """What the searcher minimised (``autotune.objective.score``)."""
    trial_id: str | None = None
    """Ray Tune's id of the trial; None for a recipe the memory gate did not launch."""
    study_trial: int | None = None
    """Number of the Optuna trial in the run directory's study; None for confirmation runs."""
    is_baseline: bool = False
    warm_start: bool = False
    """One of the warm-start recipes tried right after the baseline."""
    warm_start_name: str | None = None
    """Which warm-start rule proposed it (``autotune.warm_start``), e.g. ``bf16``."""
    rerun_of: int | None = None
    """For a confirmation run: the ``trial`` it repeats with another seed."""
    seed: int = 0
    recipe: dict[str, Any] | None = None
    """The recipe as ``Recipe.to_dict()``; None when the sampled point was not a valid recipe."""
    params: dict[str, Any] = field(default_factory=dict)
    """The point the searcher proposed (search-space parameter names)."""
    launched: bool = True
    """False when the recipe never ran: the memory gate predicted it over the budget, or the
    cluster cannot hold its workers (``message`` says which)."""
    message: str = ""
    """Why the trial ended without a time-to-target, in words."""
    started_at: float | None = None
    finished_at: float | None = None
    node_ip: str | None = None
    node_id: str | None = None
    hostname: str | None = None
    worker_nodes: list[str] | None = None
    worker_gpus: list[list[str]] | None = None
    """The ids of the GPUs Ray gave each worker (one list per worker, in ``worker_nodes``'
    order; a single-process trial is one worker): empty lists on CPUs."""
    prediction: dict[str, Any] | None = None
    """The memory gate's prediction (``autotune.memory.Prediction.to_dict()``)."""
    error_file: str | None = None
    """A failed trial's full error (Ray Tune's ``error.txt``, with the traceback)."""
    provenance: dict[str, Any] | None = None
    """What produced the record: library versions, host and device name of the process that
    ran the trial (``autotune.search.provenance.trial_provenance``)."""
    # -- measurements: the fields of autotune.train.TrialResult ------------------------------
    tta_seconds: float | None = None
    best_metric: float | None = None
    last_metric: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    eval_points_full: int | None = None
    eval_points_quick: int | None = None
    setup_seconds: float | None = None
    loader_start_seconds: float | None = None
    compile_seconds: float | None = None
    inactive_knobs: list[str] | None = None
    steps: int | None = None
    examples: int | None = None
    peak_memory_bytes: int | None = None
    peak_memory_source: str | None = None
    peak_reserved_bytes: int | None = None
    peak_rss_bytes: int | None = None
    predicted_peak_bytes: int | None = None
    prediction_error: float | None = None
    tracked_peak_bytes: int | None = None
    memory_breakdown: dict[str, int] | None = None
    memory_cap_fraction: float | None = None
    device: str | None = None
    curve: list[list[float]] | None = None
    """(training seconds, metric) at each evaluation."""

    @property
    def reached(self) -> bool:
        return self.status == objective.REACHED and self.tta_seconds is not None

    @property
    def is_search_trial(self) -> bool:
        """A trial of the search itself (not a confirmation run of one)."""
        return self.rerun_of is None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data with ``schema`` first; NaN/inf become None (JSON has neither)."""
        out: dict[str, Any] = {"schema": SCHEMA_VERSION}
        for key, value in dataclasses.asdict(self).items():
            out[key] = None if isinstance(value, float) and not math.isfinite(value) else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str = "record") -> TrialRecord:
        """The record from ``to_json`` data; ``RecordFormatError`` for another schema."""
        schema = data.get("schema")
        if schema != SCHEMA_VERSION:
            written = "no schema version (an autotune older than 0.2)" if schema is None \
                else f"schema {schema!r}"
            raise RecordFormatError(
                f"{source}: written with {written}; this autotune reads schema "
                f"{SCHEMA_VERSION}. Start a new search (or read it with the autotune version "
                "that wrote it)."
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_measurements(self, result: dict[str, Any]) -> TrialRecord:
        """A copy with every measurement field that ``result`` (a trial's reported
        ``TrialResult.to_dict()``, possibly flattened by Ray) holds."""
        changes = {name: result[name] for name in MEASUREMENTS if result.get(name) is not None}
        if "curve" in changes:
            changes["curve"] = [list(point) for point in changes["curve"]]
        return dataclasses.replace(self, **changes)


MEASUREMENTS = tuple(f.name for f in fields(TrialRecord)
                     if f.name not in {"trial", "status", "score", "trial_id", "study_trial",
                                       "is_baseline", "warm_start", "warm_start_name",
                                       "rerun_of", "seed", "recipe",
                                       "params", "launched", "message", "started_at",
                                       "finished_at", "node_ip", "node_id", "hostname",
                                       "worker_nodes", "worker_gpus", "prediction",
                                       "error_file", "provenance"})
"""The record fields filled from a trial's measurements."""


def ended_status(result: dict[str, Any] | None, error: bool) -> str:
    """The state of an ended trial from its last reported result: a crashed trial process is
    an error; a trial whose last report was not its final one was stopped by the scheduler."""
    if error:
        return objective.ERROR
    if not result:
        return objective.ERROR
    if not result.get("final"):
        return objective.STOPPED
    return str(result.get("status", objective.ERROR))


def ended_score(status: str, result: dict[str, Any] | None, target: float,
                max_train_seconds: float, higher_is_better: bool = True) -> float:
    """The score of an ended trial in state ``status`` (``autotune.objective.score``)."""
    result = result or {}
    tta = result.get("tta_seconds") if status == objective.REACHED else None
    return objective.score(status, tta, result.get("best_metric"), target, max_train_seconds,
                           higher_is_better)


def dumps(record: TrialRecord) -> str:
    """One line of ``trials.jsonl``."""
    return json.dumps(record.to_json(), allow_nan=False) + "\n"
