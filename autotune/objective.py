"""How a trial is scored: the one place that says what the search minimises.

A trial that reaches the target scores its time-to-target (TTA) in training seconds. A trial
with no TTA scores a penalty above any TTA the trial could have had, so the searcher ranks every
trial that reached the target ahead of every one that did not:

- stopped before the target (time limit, or stopped early by the scheduler):
  ``max_train_seconds * (2 + gap)``, where ``gap = (target - best metric) / target`` clipped to
  [0, 1], so a trial that came closer scores better;
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


def score(
    status: str, tta_seconds: float | None, best_metric: float | None, target: float,
    max_train_seconds: float,
) -> float:
    """The value the searcher minimises for a trial (see the module docstring)."""
    if status == REACHED and tta_seconds is not None:
        return float(tta_seconds)
    if status in FAILED_STATES:
        return 4.0 * max_train_seconds
    best = best_metric if best_metric is not None else 0.0
    gap = min(1.0, max(0.0, (target - best) / target))
    return max_train_seconds * (2.0 + gap)
