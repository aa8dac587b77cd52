"""The search's output while it runs: permanent lines (a trial started, ended) and a live status
line (``autotune.report.status_line`` of ``autotune.search.progress.SearchProgress``).

Three modes:

- ``terminal`` (stdout is a terminal): the status line sits below the permanent lines and is
  redrawn in place (carriage return, erase line) at each event and every ``REDRAW_S`` by a
  timer thread, so elapsed time and the estimate move between a trial's results (which arrive
  at most every ``--report-interval``, 5 s: a report costs the trial time). It is cut to the
  terminal's width, since a wrapped line cannot be redrawn in place.
- ``lines`` (stdout is a file or a pipe, e.g. a CI log; or ``-v``, whose Ray and Optuna log
  lines would tear a redrawn line): the status as a plain line every ``LINE_EVERY_S``
  (``AUTOTUNE_STATUS_EVERY`` seconds where set), no carriage returns.
- ``quiet`` (``-q``): nothing while the search runs; warnings still go to stderr.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Callable
from typing import TextIO

REDRAW_S = 1.0
"""How often a terminal's status line is redrawn between events."""
LINE_EVERY_S = 30.0
"""How often the status is printed as a plain line when stdout is not a terminal."""
LINE_EVERY_ENV = "AUTOTUNE_STATUS_EVERY"
"""Environment variable that changes ``LINE_EVERY_S`` (seconds), e.g. for a CI log."""


def line_every_s() -> float:
    """``LINE_EVERY_S``, or ``AUTOTUNE_STATUS_EVERY`` when it holds a positive number."""
    try:
        value = float(os.environ.get(LINE_EVERY_ENV, ""))
    except ValueError:
        return LINE_EVERY_S
    return value if value > 0 else LINE_EVERY_S
CLEAR = "\r\x1b[K"
"""Back to the line's start, erase to its end (ANSI; every terminal autotune runs in)."""


def pick_mode(quiet: bool, verbose: bool, stream: TextIO) -> str:
    """``quiet``, ``lines`` or ``terminal`` (see the module docstring)."""
    if quiet:
        return "quiet"
    if verbose or os.environ.get("TERM") == "dumb":
        return "lines"
    isatty = getattr(stream, "isatty", None)
    return "terminal" if isatty is not None and isatty() else "lines"


class StatusDisplay:
    """See the module docstring. ``status`` gives the current status line; it is called from
    the timer thread too, so it must only read."""

    def __init__(self, status: Callable[[], str], mode: str, out: TextIO | None = None,
                 err: TextIO | None = None, redraw_s: float = REDRAW_S,
                 line_every: float | None = None) -> None:
        self.status = status
        self.mode = mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.interval = redraw_s if mode == "terminal" else line_every or line_every_s()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False
        """A status line is on the screen (terminal mode)."""

    # -- the timer ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start showing the status (from the first trial on)."""
        if self.mode == "quiet" or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._tick, name="autotune-status", daemon=True)
        self._thread.start()
        self.refresh()

    def stop(self) -> None:
        """Stop the timer and take the status line off the screen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._erase()
            self.out.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            if self.mode == "terminal":
                self.refresh()
            else:
                self._plain_status()

    # -- output ------------------------------------------------------------------------------
    def line(self, text: str, err: bool = False) -> None:
        """A permanent line (stderr with ``err``: warnings, shown even when quiet)."""
        if self.mode == "quiet" and not err:
            return
        with self._lock:
            self._erase()
            stream = self.err if err else self.out
            stream.write(text + "\n")
            stream.flush()
            self._draw()

    def refresh(self) -> None:
        """Redraw the status line now (terminal mode; the other modes print on their timer)."""
        if self.mode != "terminal" or self._thread is None or self._stop.is_set():
            return
        with self._lock:
            self._draw()

    def _plain_status(self) -> None:
        with self._lock:
            self.out.write(f"status: {self._safe_status()}\n")
            self.out.flush()

    def _draw(self) -> None:
        if self.mode != "terminal" or self._thread is None or self._stop.is_set():
            return
        width = shutil.get_terminal_size((100, 24)).columns
        self.out.write(CLEAR + self._safe_status()[:max(20, width - 1)])
        self.out.flush()
        self._drawn = True

    def _erase(self) -> None:
        if self._drawn:
            self.out.write(CLEAR)
            self._drawn = False

    def _safe_status(self) -> str:
        try:
            return self.status()
        except Exception as exc:  # noqa: BLE001 - a status line must not end a search
            return f"(status unavailable: {type(exc).__name__}: {exc})"
