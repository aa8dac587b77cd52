"""How far a search is: trials done of the total, time used and left of the time budget, an
estimate of when it ends, the best so far, and each running trial's training progress.

``SearchProgress`` follows the search's events (``search(..., on_event=progress.on_event)``;
``("progress", TrialProgress)`` arrives with each intermediate result of a running trial, which
a trial sends at most every ``SearchRequest.report_interval_s``) and answers ``snapshot(now)``
at any time, so a display can redraw elapsed time and the estimate between results. Plain data
and arithmetic: no printing (``autotune.report.status_line`` formats a snapshot, the CLI draws
it).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from autotune.results import TrialRecord
from autotune.search.winner import Candidate, summarize


@dataclass(frozen=True)
class TrialProgress:
    """A running trial's latest intermediate result (the ``"progress"`` event)."""

    trial: int
    """The trial's number in the search (as in its record)."""
    train_seconds: float
    """Training clock at its latest evaluation."""
    max_train_seconds: float
    """Its training-time limit (a confirmation run's own limit)."""
    last_metric: float | None = None
    best_metric: float | None = None
    rerun_of: int | None = None
    """For a confirmation run: the trial it repeats."""
    seed: int = 0
    at: float = field(default_factory=time.time)
    """When the driver received it."""


@dataclass(frozen=True)
class Snapshot:
    """The search's state at one moment (``SearchProgress.snapshot``)."""

    done: int
    """Search trials ended (the baseline and refused recipes included; confirmation runs not)."""
    total: int
    """Search trials at most (``--trials``)."""
    elapsed_s: float
    time_budget_s: float | None
    remaining_s: float | None
    """Of the time budget; None without one."""
    eta_s: float | None
    """Estimated seconds until the search ends; None before anything allows an estimate."""
    best: Candidate | None
    running: tuple[tuple[TrialRecord, TrialProgress | None], ...]
    """Each running trial's start record and its latest intermediate result (None before the
    first one)."""
    confirming: int | None
    """Confirmation runs in this run of the search, once they have begun; else None."""
    confirmed: int
    """Confirmation runs ended."""


class SearchProgress:
    """See the module docstring. Events may arrive from Tune's driver loop while a display
    thread reads ``snapshot``; each event replaces whole values, so a snapshot is consistent
    enough for a status line."""

    def __init__(self, total: int, time_budget_s: float | None = None,
                 start: float | None = None, confirm_runs: int = 0) -> None:
        self.total = total
        self.time_budget_s = time_budget_s
        self.start = time.time() if start is None else start
        self.expected_confirm_runs = confirm_runs
        """Confirmation runs expected before they begin (the ``confirming`` event says how
        many there are)."""
        self.records: list[TrialRecord] = []
        self.prior = 0
        self.running: dict[int, tuple[TrialRecord, TrialProgress | None]] = {}
        self.confirming: int | None = None
        self.most_running = 1

    def on_event(self, kind: str, payload: Any) -> None:
        """Follow one of the search's events (``autotune.search.api``)."""
        if kind == "plan":
            r = payload.request
            self.total, self.time_budget_s = r.trials, payload.time_budget_s
            self.start = time.time()
            self.expected_confirm_runs = (r.confirm_top + 1) * r.confirm_seeds \
                if r.confirm_top else 0
        elif kind == "resumed":
            self.records = [*payload["records"], *self.records]
            self.prior = len(payload["records"])
        elif kind == "started":
            self.running[payload.trial] = (payload, None)
            self.most_running = max(self.most_running, len(self.running))
        elif kind == "progress":
            started = self.running.get(payload.trial)
            if started is not None:
                self.running[payload.trial] = (started[0], payload)
        elif kind == "finished":
            self.running.pop(payload.trial, None)
            self.records = [*self.records, payload]
        elif kind == "confirming":
            self.confirming = int(payload["trials"])

    def snapshot(self, now: float | None = None) -> Snapshot:
        now = time.time() if now is None else now
        elapsed = max(0.0, now - self.start)
        records = self.records
        remaining = None if self.time_budget_s is None else max(0.0, self.time_budget_s - elapsed)
        return Snapshot(
            done=sum(r.is_search_trial for r in records), total=self.total, elapsed_s=elapsed,
            time_budget_s=self.time_budget_s, remaining_s=remaining,
            eta_s=self._eta(records, now, remaining), best=summarize(records).best,
            running=tuple(self.running[k] for k in sorted(self.running)),
            confirming=self.confirming,
            confirmed=sum(not r.is_search_trial for r in records[self.prior:]),
        )

    def _eta(self, records: list[TrialRecord], now: float, remaining: float | None
             ) -> float | None:
        """Runs left times the median wall time of a trial of this run, over the trials that
        run at once, and the running trials' own time left; at most the time budget left (the
        search starts nothing after it; running trials finish)."""
        walls = [r.finished_at - r.started_at for r in records[self.prior:]
                 if r.launched and r.started_at is not None and r.finished_at is not None]
        if not walls:
            return remaining
        per_trial = statistics.median(walls)
        search_left = max(0, self.total - sum(r.is_search_trial for r in records)
                          - sum(1 for rec, _ in self.running.values() if rec.is_search_trial))
        if self.confirming is None:
            confirm_left = self.expected_confirm_runs
        else:
            confirm_left = self.confirming - sum(not r.is_search_trial
                                                 for r in records[self.prior:])
            confirm_left -= sum(1 for rec, _ in self.running.values() if not rec.is_search_trial)
        queued = (search_left + max(0, confirm_left)) * per_trial / self.most_running
        in_flight = max((max(0.0, per_trial - (now - (now if rec.started_at is None
                                                      else rec.started_at)))
                         for rec, _ in self.running.values()), default=0.0)
        eta = in_flight + queued
        return eta if remaining is None else min(eta, remaining + in_flight)
