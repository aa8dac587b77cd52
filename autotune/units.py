"""Parsing and printing of memory sizes and durations given by users (``16GB``, ``5m``)."""

from __future__ import annotations

import re

from autotune.errors import UserError

_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_SIZE_RE = re.compile(rf"^\s*({_NUMBER})\s*([a-zA-Z]*)\s*$")
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_bytes(text: str | int | float, *, what: str = "--budget") -> int:
    """Parse a memory size: ``16GB`` (10^9), ``16GiB`` (2^30), ``512MiB``, ``2e9``.

    Suffixes are case-insensitive; a bare number is bytes. Raises ``UserError`` naming ``what``
    (the flag or key the user wrote) for anything else, including zero and negative sizes.
    """
    if isinstance(text, bool):
        raise UserError(f"{what} must be a memory size such as 16GB, got {text!r}")
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        match = _SIZE_RE.match(text)
        if not match:
            raise UserError(
                f"{what} must be a positive memory size such as 16GB, 16GiB or 512MiB, got "
                f"{text!r}. Units: B, KB, MB, GB, TB (powers of 1000) and KiB, MiB, GiB, TiB "
                "(powers of 1024), case-insensitive."
            )
        value, unit = float(match.group(1)), match.group(3).lower()
        if unit not in _BYTE_UNITS:
            raise UserError(
                f"{what}: unknown unit {match.group(3)!r} in {text!r}. Use one of B, KB, MB, GB, "
                "TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 16GB."
            )
    size = int(value * _BYTE_UNITS[unit])
    if size <= 0:
        raise UserError(f"{what} must be a positive memory size such as 16GB, got {text!r}")
    return size


def format_bytes(size: float | None) -> str:
    """Human-readable size in binary units (``1.50 GiB``); ``-`` for unknown."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_duration(text: str | int | float, *, what: str = "--time-budget") -> float:
    """Parse a duration in seconds: ``300``, ``300s``, ``5m``, ``1.5h``, ``1h30m``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)\s*(min|[smhd]?)", s)
        rebuilt = "".join(f"{n}{u}" for n, u in parts)
        if not parts or rebuilt != s.replace(" ", ""):
            raise UserError(
                f"{what} must be a duration such as 300 (seconds), 90s, 5m, 1h or 1h30m, got "
                f"{text!r}"
            )
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise UserError(f"{what} must be a positive duration such as 5m, got {text!r}")
    return seconds


def format_duration(seconds: float | None) -> str:
    """Short duration for tables: ``12.3s``, ``4m05s``; ``-`` for unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
