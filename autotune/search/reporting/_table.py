"""``trials.csv``: one row per trial with flat columns, for spreadsheets and pandas.

Every scalar field of a ``TrialRecord`` is a column (the same names as in ``trials.jsonl``),
then one ``recipe.<knob>`` column per knob and one ``prediction.<part>`` column per part of
the memory prediction (the names ``pandas.json_normalize`` gives). The learning curve, a list,
is left to ``trials.jsonl``; ``curve_points`` says how many evaluations it has. Confirmation
runs and the recipes the memory gate refused are rows too (``rerun_of``, ``launched``).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import fields
from typing import Any

from autotune.results import TrialRecord

NESTED = ("recipe", "prediction")
"""Record fields that are dicts of scalars: one column per key, ``<field>.<key>``."""
LEFT_OUT = ("curve", "params", "worker_nodes", "memory_breakdown")
"""Record fields that are not one value: in ``trials.jsonl`` only (``params`` repeats the
recipe in search-space names; ``memory_breakdown`` repeats ``prediction``)."""


def columns(records: list[TrialRecord]) -> list[str]:
    """The header: the record's scalar fields in their order, ``curve_points``, then every
    nested key any record has, in first-seen order."""
    plain = [f.name for f in fields(TrialRecord) if f.name not in NESTED + LEFT_OUT]
    nested: dict[str, None] = {}
    for name in NESTED:
        for r in records:
            for key in getattr(r, name) or {}:
                nested[f"{name}.{key}"] = None
    return [*plain, "curve_points", *nested]


def row(record: TrialRecord) -> dict[str, Any]:
    """One record as a flat row (``None`` as an empty cell; a list or dict that a newer
    record field holds as JSON text)."""
    data = record.to_json()
    out = {k: v for k, v in data.items() if k not in NESTED + LEFT_OUT + ("schema",)}
    out["curve_points"] = len(record.curve or [])
    for name in NESTED:
        for key, value in (getattr(record, name) or {}).items():
            out[f"{name}.{key}"] = value
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in out.items()}


def trials_csv(records: list[TrialRecord]) -> str:
    """The text of ``trials.csv`` for ``records`` (in the order they ended)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(records), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow(row(record))
    return buffer.getvalue()
