"""Confirmation and winner selection: pure functions of the trial records (no Ray, no Optuna).

After the search, the fastest ``confirm_top`` distinct recipes that reached the target, and the
baseline if it did, run again with ``confirm_seeds`` further seeds (``confirm_points``). The
winner is then the confirmed recipe with the lowest median time-to-target over its runs (a run
that did not reach the target counts as infinitely slow), so one lucky seed does not make a
winner; without confirmation runs, the fastest trial wins. The speedup compares the winner's
median with the baseline's.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from autotune import objective
from autotune.results import TrialRecord

RERUN_TIME_FACTOR = 3.0
"""A confirmation run slower than this many times the original's time-to-target cannot change
the ranking, so its time limit is that."""


@dataclass(frozen=True)
class Candidate:
    """A recipe the search tried: its first trial and the confirmation runs of it."""

    record: TrialRecord
    """The search's own trial of the recipe."""
    reruns: tuple[TrialRecord, ...] = ()

    @property
    def runs(self) -> tuple[TrialRecord, ...]:
        return (self.record, *self.reruns)

    @property
    def confirmed(self) -> bool:
        return bool(self.reruns)

    @property
    def tta_runs(self) -> list[float | None]:
        """Each run's time-to-target (None where the target was not reached)."""
        return [r.tta_seconds if r.reached else None for r in self.runs]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def tta_seconds(self) -> float | None:
        """The median time-to-target over the runs; None if that median did not reach."""
        if not self.record.reached:
            return None
        median = statistics.median([t if t is not None else math.inf for t in self.tta_runs])
        return median if math.isfinite(median) else None

    @property
    def tta_spread(self) -> list[float | None]:
        """[fastest, slowest] run; None as the slowest when a run did not reach the target."""
        reached = [t for t in self.tta_runs if t is not None]
        if not reached:
            return [None, None]
        return [min(reached), max(reached) if len(reached) == len(self.tta_runs) else None]


@dataclass(frozen=True)
class Summary:
    """The search's verdict: the winner, the baseline, and the speedup between them."""

    best: Candidate | None
    """Lowest median time-to-target among confirmed recipes (or among all that reached the
    target, when none was confirmed); None if no trial reached it."""
    baseline: Candidate | None
    speedup: float | None
    """Baseline time-to-target / the winner's; when the baseline never reached the target, a
    lower bound from the baseline's training time (``speedup_is_lower_bound``)."""
    speedup_is_lower_bound: bool = False

    def speedup_text(self) -> str:
        if self.speedup is None:
            return "n/a"
        return f"{'>= ' if self.speedup_is_lower_bound else ''}{self.speedup:.2f}x"


def candidates(records: list[TrialRecord]) -> list[Candidate]:
    """The search's own trials, in order, each with its confirmation runs (interrupted runs
    are left out)."""
    reruns: dict[int, list[TrialRecord]] = {}
    for r in records:
        # A rerun interrupted (Ctrl-C) or stopped at the time budget's end says nothing of
        # its recipe's speed: it is left out, not counted as a miss.
        if not r.is_search_trial and r.status not in (objective.INTERRUPTED, objective.STOPPED):
            reruns.setdefault(int(r.rerun_of or 0), []).append(r)
    return [Candidate(r, tuple(reruns.get(r.trial, ())) if r.reached else ())
            for r in records if r.is_search_trial]


def summarize(records: list[TrialRecord]) -> Summary:
    """The winner and the speedup over the baseline (see the module docstring)."""
    pool = [c for c in candidates(records) if c.tta_seconds is not None]
    confirmed = [c for c in pool if c.confirmed]
    best = min(confirmed or pool, key=lambda c: (c.tta_seconds, c.record.trial), default=None)
    baseline = next((c for c in candidates(records) if c.record.is_baseline), None)
    speedup, lower = None, False
    if best is not None and baseline is not None:
        assert best.tta_seconds is not None
        if baseline.tta_seconds is not None:
            speedup = baseline.tta_seconds / best.tta_seconds
        elif baseline.record.status == objective.NOT_REACHED and baseline.record.train_seconds:
            speedup, lower = baseline.record.train_seconds / best.tta_seconds, True
    return Summary(best=best, baseline=baseline, speedup=speedup, speedup_is_lower_bound=lower)


def confirm_points(records: list[TrialRecord], top: int, seeds: int, seed: int,
                   max_train_seconds: float) -> list[dict[str, Any]]:
    """The confirmation runs still to do: for the ``top`` fastest distinct recipes that
    reached the target, and the baseline if it did, each of seeds ``seed+1 .. seed+seeds`` not
    yet run. A point is the trial's params plus ``_seed``, ``_rerun_of`` (the original trial)
    and ``_max_train_seconds`` (see ``RERUN_TIME_FACTOR``).

    Ordered seed by seed (every recipe's first further seed, fastest recipe first, then every
    recipe's second...), so that when the time budget cuts the list (``fit_in_time``) each
    recipe keeps as many seeds as the others."""
    if top <= 0 or seeds <= 0:
        return []
    ranked: list[TrialRecord] = []
    for r in sorted((r for r in records if r.is_search_trial and r.reached),
                    key=lambda r: (r.tta_seconds, r.trial)):
        if all(r.recipe != other.recipe for other in ranked):
            ranked.append(r)
    chosen = ranked[:top]
    baseline = next((r for r in ranked if r.is_baseline), None)
    if baseline is not None and baseline not in chosen:
        chosen.append(baseline)
    points = []
    for k in range(1, seeds + 1):
        for r in chosen:
            done = {x.seed for x in records if x.rerun_of == r.trial
                    and x.status not in (objective.INTERRUPTED, objective.STOPPED)}
            if seed + k in done:
                continue
            assert r.tta_seconds is not None
            limit = min(max_train_seconds, RERUN_TIME_FACTOR * r.tta_seconds + 1.0)
            points.append({**r.params, "_seed": seed + k, "_rerun_of": r.trial,
                           "_max_train_seconds": limit})
    return points


def expected_wall_seconds(record: TrialRecord, limit: float) -> float:
    """How long a confirmation run of ``record``'s recipe should take, start to end: the
    original trial's own wall time (it ended when it reached the target, as the rerun will),
    else its setup, training and evaluation seconds, else ``limit``."""
    if record.started_at is not None and record.finished_at is not None:
        return max(0.0, record.finished_at - record.started_at)
    parts = [record.setup_seconds, record.train_seconds, record.eval_seconds]
    if any(p is not None for p in parts):
        return sum(p or 0.0 for p in parts)
    return limit


def fit_in_time(points: list[dict[str, Any]], records: list[TrialRecord], seconds: float,
                concurrency: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split confirmation ``points`` (in ``confirm_points``' order) into those expected to end
    within ``seconds`` on ``concurrency`` trial slots, and those cut: each point goes to the
    slot free first (as Tune starts them), and is kept if it would end in time
    (``expected_wall_seconds`` of its original trial)."""
    by_trial = {r.trial: r for r in records if r.is_search_trial}
    slots = [0.0] * max(1, concurrency)
    kept: list[dict[str, Any]] = []
    cut: list[dict[str, Any]] = []
    for point in points:
        original = by_trial.get(int(point["_rerun_of"]))
        limit = float(point.get("_max_train_seconds", seconds))
        cost = expected_wall_seconds(original, limit) if original else limit
        slot = min(range(len(slots)), key=slots.__getitem__)
        if slots[slot] + cost <= seconds:
            slots[slot] += cost
            kept.append(point)
        else:
            cut.append(point)
    return kept, cut


NOT_PLACED = "cannot be placed: "
"""How the message of a recipe that the cluster cannot hold begins (refused, never launched:
``autotune.search._ray.placement_problem``)."""


def no_winner_reason(records: list[TrialRecord], metric: str, target: float,
                     trials_path: str, higher_is_better: bool = True) -> str:
    """Why the search has no winner, and what to change, in one paragraph."""
    seen = [r.best_metric for r in records if r.best_metric is not None]
    best_metric = (max(seen) if higher_is_better else min(seen)) if seen else float("nan")
    counts: dict[str, int] = {}
    for r in records:
        counts[r.status] = counts.get(r.status, 0) + 1
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none ran"
    hint = ""
    unplaced = sum(r.status == objective.INFEASIBLE and r.message.startswith(NOT_PLACED)
                   for r in records)
    if counts.get(objective.INFEASIBLE, 0) > unplaced:
        hint = (" Infeasible trials were predicted over the budget, ran out of memory or "
                "exceeded it: raise --budget (autotune estimate shows what fits).")
    if unplaced:
        hint += (f" {unplaced} recipe(s) could not be placed on the cluster (their message "
                 "says which resources are missing): see --workers-per-trial, --placement, "
                 "--gpus-per-trial.")
    return (f"no trial reached the target {metric} {objective.comparison(higher_is_better)} "
            f"{target} (best seen: {best_metric:.4f}; "
            f"trials: {states}).{hint} Every trial's measurements are in {trials_path}. Lower "
            "the target with --target, allow longer trials with --max-trial-time, or run more "
            "--trials.")
