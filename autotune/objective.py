"""How a trial is scored: the one place that says what the search minimises.

A trial that reaches the target scores its time-to-target (TTA) in training seconds. A trial
with no TTA scores a penalty above any TTA the trial could have had, so the searcher ranks every
trial that reached the target ahead of every one that did not:

- stopped before the target (time limit, or stopped early by the scheduler):
  ``max_train_seconds * (2 + gap)``, where ``gap`` is the relative distance of the best metric
  from the target in the metric's direction (``(target - best) / target`` when higher is
  better, ``(best - target) / target`` when lower is better) clipped to [0, 1], so a trial that
  came closer scores better;
- failed (infeasible: out of memory or over the budget; diverged: NaN/inf loss; error):
  ``max_train_seconds * 4``, the worst score.
"""

from __future__ import annotations

REACHED = "reached"
"""The trial reached the target: it has a time-to-target."""
NOT_REACHED = "not_reached"
"""The trial trained to its time limit without reaching the target."""
STOPPED = "stopped"
"""The scheduler stopped the trial early because it was behind others."""
RUNNING = "running"
"""Intermediate state, while the trial trains."""
INFEASIBLE = "infeasible"
"""Out of memory, or its peak memory exceeded the budget."""
DIVERGED = "diverged"
"""The loss became NaN or infinite."""
ERROR = "error"
"""The trial crashed for another reason (recorded with the message)."""

INTERRUPTED = "interrupted"
"""The search was interrupted (Ctrl-C) while the trial ran; it has what it reported so far."""

FAILED_STATES = (INFEASIBLE, DIVERGED, ERROR)


def reaches(value: float, target: float, higher_is_better: bool = True) -> bool:
    """Whether a metric ``value`` is at the target, in the metric's direction."""
    return value >= target if higher_is_better else value <= target


def best_of(a: float | None, b: float, higher_is_better: bool = True) -> float:
    """The better of two metric values (``a`` may be None: none yet)."""
    if a is None:
        return b
    return max(a, b) if higher_is_better else min(a, b)


def comparison(higher_is_better: bool = True) -> str:
    """``>=`` or ``<=``: how a metric must compare with its target."""
    return ">=" if higher_is_better else "<="


def score(
    status: str, tta_seconds: float | None, best_metric: float | None, target: float,
    max_train_seconds: float, higher_is_better: bool = True,
) -> float:
    """The value the searcher minimises for a trial (see the module docstring)."""
    if status == REACHED and tta_seconds is not None:
        return float(tta_seconds)
    if status in FAILED_STATES:
        return 4.0 * max_train_seconds
    if best_metric is None:
        gap = 1.0
    else:
        gap = (target - best_metric if higher_is_better else best_metric - target) / target
    return max_train_seconds * (2.0 + min(1.0, max(0.0, gap)))
