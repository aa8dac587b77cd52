"""The scheduler: which running trials stop early.

ASHA compares trials by their best metric at equal training time (higher or lower is better,
as the task's metric goes) and stops the worse half at each rung. On top of it, a time-aware
rule (``cannot_win``): a trial that has trained ``time_margin`` x the best time-to-target so
far without reaching the target cannot win, so it stops. ASHA alone lets such trials run: the
fastest trials end before the late rungs, which then hold only slow trials.

Both schedulers (ASHA for the search, FIFO for the confirmation runs) also keep the time
budget (``Deadline``): at the phase's end a running trial is stopped at its next report, and
its id noted, so its record says why it stopped.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from autotune import objective


def cannot_win(result: dict[str, Any], best_tta: float | None, time_margin: float) -> bool:
    """Whether a trial's latest ``result`` shows it can no longer beat ``best_tta``."""
    seconds = result.get("train_seconds")
    return (best_tta is not None and seconds is not None
            and result.get("status") != objective.REACHED
            and seconds > time_margin * best_tta)


class Deadline:
    """When a phase of the search must end (a ``time.time()`` value; None: no end), and the
    trials stopped for it (ids, shared with the recorder)."""

    def __init__(self, at: float | None = None, stopped: set[str] | None = None) -> None:
        self.at = at
        self.stopped: set[str] = stopped if stopped is not None else set()

    def passed(self, trial: Any) -> bool:
        """Whether the phase is over; notes ``trial`` as stopped for it."""
        if self.at is None or time.time() < self.at:
            return False
        self.stopped.add(trial.trial_id)
        return True


class DeadlineFIFO(FIFOScheduler):
    """Every trial runs to its end, unless the phase's ``Deadline`` passes."""

    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self.deadline.passed(trial):
            return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, result)


class TimeAwareASHA(ASHAScheduler):
    """ASHA on the best metric at equal training time, plus ``cannot_win`` and the phase's
    ``Deadline``."""

    def __init__(self, max_train_seconds: float, grace_period_s: float, time_margin: float,
                 best_tta: float | None = None, higher_is_better: bool = True,
                 deadline: Deadline | None = None) -> None:
        super().__init__(
            time_attr="train_seconds", metric="best_metric",
            mode="max" if higher_is_better else "min",
            max_t=max_train_seconds * 10,  # trials stop themselves at their limit
            grace_period=grace_period_s, reduction_factor=2,
        )
        self.time_margin = time_margin
        self.best_tta = best_tta
        """The best time-to-target so far (a resumed search starts from its earlier runs')."""
        self.deadline = deadline or Deadline()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self.deadline.passed(trial) or cannot_win(result, self.best_tta, self.time_margin):
            return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        tta = result.get("tta_seconds") if result.get("status") == objective.REACHED else None
        if tta is not None and (self.best_tta is None or tta < self.best_tta):
            self.best_tta = tta
        super().on_trial_complete(tune_controller, trial, result)


def grace_seconds(max_train_seconds: float, grace_period_s: float | None) -> float:
    """ASHA's first rung: the training seconds every trial gets before it can be stopped."""
    return grace_period_s or max(1.0, max_train_seconds / 6)


def make_scheduler(kind: str, max_train_seconds: float, grace_period_s: float | None,
                   time_margin: float, best_tta: float | None, *,
                   higher_is_better: bool = True,
                   deadline: Deadline | None = None) -> TrialScheduler:
    """``asha`` (the default) or ``fifo`` (every trial runs to its end; for benchmarks); both
    stop running trials once ``deadline`` passes."""
    if kind == "fifo":
        return DeadlineFIFO(deadline or Deadline())
    return TimeAwareASHA(max_train_seconds, grace_seconds(max_train_seconds, grace_period_s),
                         time_margin, best_tta, higher_is_better, deadline)
