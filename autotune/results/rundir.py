"""The run directory: the one owner of every file a search writes.

Layout of ``autotune_runs/<model>-<date>-<time>/`` (or ``--results-dir``)::

    settings.json      the search's settings (SearchRequest) and its sessions (start, end)
    space.yaml         the search space as the search started with it (resume reads it)
    trials.jsonl       one TrialRecord a line, appended as each trial ends
    screening.jsonl    one ScreenRecord a line: each system configuration's screening
    study.journal      the Optuna study (JournalStorage): every proposal, with its recipe,
                       state and measurements as user attributes; optuna.load_study opens it
    search.yaml        what was searched, on what, for how long (written at the end)
    best_recipe.yaml   the winner, with what it measured and the baseline (unless --output)
    ray/               Ray Tune's own experiment files (unless --storage)
    .lock              held while a search runs in the directory

Appends are atomic: a record is one ``write`` of one line to a file opened for appending, so a
driver killed mid-search leaves whole lines; a reader that still finds a torn line (a full
disk, a crash of the machine) says so and keeps the rest. A second search on a directory that
a running search holds is refused (an advisory ``flock`` on ``.lock``, released by the kernel
when the holder dies, so a killed search never leaves the directory locked).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from autotune.errors import UserError
from autotune.results.records import RecordFormatError, TrialRecord, dumps
from autotune.results.screening import ScreenRecord, screen_dumps

TRIALS_FILE = "trials.jsonl"
SCREENING_FILE = "screening.jsonl"
SETTINGS_FILE = "settings.json"
SPACE_FILE = "space.yaml"
STUDY_FILE = "study.journal"
SEARCH_FILE = "search.yaml"
BEST_FILE = "best_recipe.yaml"
LOCK_FILE = ".lock"


def check_writable(path: Path, what: str, *, is_dir: bool) -> None:
    """Raise ``UserError`` now, before any trial runs, if ``path`` cannot be written later:
    a parent is a regular file, the nearest existing folder is not writable, or the path
    exists as the wrong kind (a folder where a file goes, or the reverse)."""
    path = Path(path)
    if path.exists() and path.is_dir() != is_dir:
        kind = "a file" if is_dir else "a folder"
        raise UserError(f"{what} {path} exists and is {kind}; choose another path")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{what} {path}: {parent} is not writable; choose another path")


class RunDirectory:
    """The files of one search (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_file: Any = None

    # -- paths ------------------------------------------------------------------------------
    @property
    def trials_path(self) -> Path:
        return self.path / TRIALS_FILE

    @property
    def screening_path(self) -> Path:
        return self.path / SCREENING_FILE

    @property
    def study_path(self) -> Path:
        return self.path / STUDY_FILE

    @property
    def space_path(self) -> Path:
        return self.path / SPACE_FILE

    @property
    def best_path(self) -> Path:
        return self.path / BEST_FILE

    def exists(self) -> bool:
        return (self.path / SETTINGS_FILE).exists()

    # -- lifetime ---------------------------------------------------------------------------
    def create(self) -> None:
        check_writable(self.path, "results directory", is_dir=True)
        self.path.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory for one search; another search on it is refused meanwhile."""
        self.create()
        handle = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115 - held for the block
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(
                f"another search is running in {self.path} ({holder}); wait for it to end, "
                "or give this one another --results-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    # -- records ----------------------------------------------------------------------------
    def append(self, record: TrialRecord) -> None:
        """Append one record as one ``write`` of one line (see the module docstring)."""
        _append_line(self.trials_path, dumps(record))

    def append_screen(self, record: ScreenRecord) -> None:
        """Append one screening record to ``screening.jsonl``, as ``append`` does."""
        _append_line(self.screening_path, screen_dumps(record))

    def screen_records(self, on_warning: Callable[[str], None] | None = None
                       ) -> list[ScreenRecord]:
        """Every screening record so far, in the order they ended (a torn line is skipped
        with a warning, as ``records`` does)."""
        return [ScreenRecord.from_json(data, source=where)
                for where, data in _read_lines(self.screening_path, on_warning)]

    def records(self, on_warning: Callable[[str], None] | None = None) -> list[TrialRecord]:
        """Every record so far, in the order trials ended. A line that is not whole JSON (a
        torn write) is skipped with a warning; a record of an unknown schema raises
        ``RecordFormatError``."""
        return [TrialRecord.from_json(data, source=where)
                for where, data in _read_lines(self.trials_path, on_warning, "a trial record")]

    # -- settings and sessions --------------------------------------------------------------
    def save_settings(self, settings: dict[str, Any], space_text: str) -> None:
        """Write the search's settings and its space copy when it starts."""
        self.space_path.write_text(space_text)
        self._write_json({"settings": settings, "sessions": []})

    def load_settings(self) -> dict[str, Any]:
        path = self.path / SETTINGS_FILE
        if not path.exists():
            raise UserError(f"{self.path}: no {SETTINGS_FILE} there; give the results directory "
                            "of a search started by autotune (it holds trials.jsonl)")
        try:
            return dict(json.loads(path.read_text())["settings"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{path} is not readable ({exc})") from None

    def begin_session(self) -> None:
        """Note a run's start (the time budget of a resumed search counts earlier runs)."""
        self._change_sessions(lambda s: s.append({"started_at": time.time()}))

    def end_session(self) -> None:
        self._change_sessions(lambda s: s[-1].update(ended_at=time.time()) if s else None)

    def sessions(self) -> list[dict[str, float]]:
        return list(self._read_json().get("sessions", []))

    def spent_seconds(self, records: list[TrialRecord]) -> float:
        """Search time used by earlier runs: each run's start to its end or, for a run whose
        driver died, to the last trial that ended in it."""
        finished = [r.finished_at or 0.0 for r in records]
        spent = 0.0
        for s in self.sessions():
            end = s.get("ended_at") or max([t for t in finished if t >= s["started_at"]],
                                          default=s["started_at"])
            spent += max(0.0, end - s["started_at"])
        return spent

    def _change_sessions(self, change: Callable[[list[dict[str, float]]], Any]) -> None:
        data = self._read_json()
        change(data.setdefault("sessions", []))
        self._write_json(data)

    def _read_json(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.path / SETTINGS_FILE).read_text()))
        except (OSError, json.JSONDecodeError):
            return {}

    def _write_json(self, data: dict[str, Any]) -> None:
        write_text(self.path / SETTINGS_FILE, json.dumps(data, indent=2, default=str) + "\n")

    # -- documents --------------------------------------------------------------------------
    def write_yaml(self, path: Path, data: dict[str, Any], header: str = "") -> None:
        write_text(path, header + yaml.safe_dump(data, sort_keys=False))


def _append_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` as one ``write`` (see the module docstring)."""
    data = line.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path} ({written} of {len(data)})")
    finally:
        os.close(fd)


def _read_lines(path: Path, on_warning: Callable[[str], None] | None, what: str = "a record"
                ) -> list[tuple[str, dict[str, Any]]]:
    """``(where, object)`` of each whole JSON line of ``path`` (none if it is missing)."""
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if on_warning is not None:
                on_warning(f"{where}: not a whole record (a torn write); skipped, the "
                           "other records are kept")
            continue
        if not isinstance(data, dict):
            raise RecordFormatError(f"{where}: not {what}")
        out.append((where, data))
    return out


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file renamed over it)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}; choose another path") \
            from None
