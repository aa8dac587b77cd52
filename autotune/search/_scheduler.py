"""The scheduler: which running trials stop early.

ASHA compares trials by their best metric at equal training time (higher or lower is better,
as the task's metric goes) and stops the worse half at each rung. On top of it, a time-aware
rule (``cannot_win``): a trial that has trained ``time_margin`` x the best time-to-target so
far without reaching the target cannot win, so it stops. ASHA alone lets such trials run: the
fastest trials end before the late rungs, which then hold only slow trials.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from autotune import objective


def cannot_win(result: dict[str, Any], best_tta: float | None, time_margin: float) -> bool:
    """Whether a trial's latest ``result`` shows it can no longer beat ``best_tta``."""
    seconds = result.get("train_seconds")
    return (best_tta is not None and seconds is not None
            and result.get("status") != objective.REACHED
            and seconds > time_margin * best_tta)


class TimeAwareASHA(ASHAScheduler):
    """ASHA on the best metric at equal training time, plus ``cannot_win``."""

    def __init__(self, max_train_seconds: float, grace_period_s: float, time_margin: float,
                 best_tta: float | None = None, higher_is_better: bool = True) -> None:
        super().__init__(
            time_attr="train_seconds", metric="best_metric",
            mode="max" if higher_is_better else "min",
            max_t=max_train_seconds * 10,  # trials stop themselves at their limit
            grace_period=grace_period_s, reduction_factor=2,
        )
        self.time_margin = time_margin
        self.best_tta = best_tta
        """The best time-to-target so far (a resumed search starts from its earlier runs')."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if cannot_win(result, self.best_tta, self.time_margin):
            return TrialScheduler.STOP
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        tta = result.get("tta_seconds") if result.get("status") == objective.REACHED else None
        if tta is not None and (self.best_tta is None or tta < self.best_tta):
            self.best_tta = tta
        super().on_trial_complete(tune_controller, trial, result)


def make_scheduler(kind: str, max_train_seconds: float, grace_period_s: float | None,
                   time_margin: float, best_tta: float | None, *,
                   higher_is_better: bool = True) -> TrialScheduler:
    """``asha`` (the default) or ``fifo`` (every trial runs to its end; for benchmarks)."""
    if kind == "fifo":
        return FIFOScheduler()
    grace = grace_period_s or max(1.0, max_train_seconds / 6)
    return TimeAwareASHA(max_train_seconds, grace, time_margin, best_tta, higher_is_better)
