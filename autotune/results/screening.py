"""The screening record: what the screening of one system configuration measured, typed,
versioned and JSON-round-trip (``screening.jsonl`` in the run directory, one record a line,
appended as each measurement ends; ``RunDirectory.append_screen``).

A search screens its system configurations before its convergence trials
(``autotune.search.screening``); a resumed search reads these records instead of measuring
again. Like ``TrialRecord``, every record carries ``schema``, and a reader refuses a schema it
does not know.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from autotune.results.records import RecordFormatError

SCREEN_SCHEMA_VERSION = 1
"""Version of the screening record's format; bump it when a field is renamed."""

REFUSED = "refused"
"""A configuration the memory gate predicted over the budget: never run."""
CUT = "cut"
"""A configuration not measured because screening's share of the time budget was spent."""


@dataclass
class ScreenRecord:
    """One screened system configuration: which, its recipe, and what it measured (the
    fields of ``autotune.train.screen.ScreenResult``)."""

    label: str
    """The configuration's name, the value of the restricted space's ``system`` parameter."""
    config: dict[str, Any]
    """The system knobs' values (recipe knob names)."""
    status: str
    """``ok``, ``infeasible``, ``unsupported``, ``error``, ``not_screened``, ``slow`` (a
    ``ScreenResult`` status), ``refused`` (the memory gate) or ``cut`` (out of time)."""
    recipe: dict[str, Any] | None = None
    """The recipe screened: the baseline with this configuration (``Recipe.to_dict()``)."""
    is_baseline: bool = False
    """The baseline's own configuration (kept whatever it measures: every search measures the
    baseline)."""
    order: int = 0
    """Place in the order configurations were screened (0: the baseline's)."""
    examples_per_second: float | None = None
    """In the best window of the timed steps: what the ranking uses."""
    mean_examples_per_second: float | None = None
    step_seconds: float | None = None
    steps: int = 0
    timed_seconds: float = 0.0
    warmup_steps: int = 0
    warmup_seconds: float = 0.0
    compile_seconds: float = 0.0
    setup_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    peak_memory_source: str | None = None
    predicted_peak_bytes: int | None = None
    """The memory gate's prediction, where there is a budget."""
    message: str = ""
    device: str = ""
    node_id: str | None = None
    finished_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Room for more measurements without a schema change."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": SCREEN_SCHEMA_VERSION}
        for key, value in dataclasses.asdict(self).items():
            out[key] = None if isinstance(value, float) and not math.isfinite(value) else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str = "record") -> ScreenRecord:
        if data.get("schema") != SCREEN_SCHEMA_VERSION:
            raise RecordFormatError(
                f"{source}: a screening record of schema {data.get('schema')!r}; this autotune "
                f"reads schema {SCREEN_SCHEMA_VERSION}. Start a new search (or read it with the "
                "autotune version that wrote it).")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_result(self, result: dict[str, Any]) -> ScreenRecord:
        """A copy with every field that ``result`` (``ScreenResult.to_dict()``) holds."""
        known = {f.name for f in fields(self)} - {"label", "config", "recipe", "is_baseline",
                                                  "order"}
        return dataclasses.replace(self, **{k: v for k, v in result.items() if k in known})


def screen_dumps(record: ScreenRecord) -> str:
    """One line of ``screening.jsonl``."""
    return json.dumps(record.to_json(), allow_nan=False) + "\n"
