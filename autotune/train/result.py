"""What bounds a trial (``TrialLimits``) and what it measured (``TrialResult``): plain data.

Every way a trial runs (one process, local worker processes, Ray actors) hands back a
``TrialResult``; one that could not start or whose workers died is built by
``TrialResult.failed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autotune import objective
from autotune.tasks import Task

ReportFn = Callable[[dict[str, Any]], None]
"""Called with the running measurements (``TrialResult.to_dict()`` plus ``final``)."""


@dataclass(frozen=True)
class TrialLimits:
    """What bounds one trial, independent of the recipe."""

    max_train_seconds: float
    """Training-clock limit: a trial that has not reached the target by then stops."""
    eval_every_seconds: float
    """Training seconds between evaluations (the resolution of time-to-target)."""
    target: float
    """Validation metric value to reach."""
    higher_is_better: bool = True
    """The metric's direction (``Task.higher_is_better``): reach ``>= target`` or ``<=``."""
    budget_bytes: int | None = None
    """Peak memory allowed on one device; a run whose measured peak exceeds it is infeasible."""
    seed: int = 0
    """Seeds the model's initial weights and the data order."""
    max_steps: int | None = None
    """Optional cap on optimizer steps (tests use it to bound work)."""
    predicted_peak_bytes: int | None = None
    """The peak the search predicted for this recipe (``autotune.memory.check_budget``);
    None: the trial predicts it itself (cached per process)."""
    quick_eval: bool = True
    """Read the validation data a piece at a time while the pieces say the metric is short of
    the target, the whole set otherwise (``autotune.train.evaluation``); False: the whole set
    at every evaluation point."""
    track_memory: bool = True
    """On a CPU, predict the peak (``predicted_peak_bytes`` unset) and measure it with two
    tracked steps: 0.4-1.5 s of setup per trial on the built-in tasks (this CPU). False,
    without a budget: neither, and the peak is recorded as not measured (``NOT_MEASURED``;
    the process's RSS is still recorded): a search without a memory budget has nothing to
    check it against. Ignored with a budget and on a GPU, whose allocator's peak costs
    nothing."""

    @classmethod
    def for_task(
        cls,
        task: Task,
        *,
        target: float | None = None,
        max_train_seconds: float | None = None,
        budget_bytes: int | None = None,
        seed: int = 0,
    ) -> TrialLimits:
        return cls(
            max_train_seconds=max_train_seconds or task.max_train_seconds,
            eval_every_seconds=task.eval_every_seconds,
            target=task.target if target is None else target,
            higher_is_better=task.higher_is_better,
            budget_bytes=budget_bytes,
            seed=seed,
        )


@dataclass
class TrialResult:
    """Everything measured in one trial; plain data, written to the results directory."""

    status: str
    """One of ``autotune.objective``'s states (reached, not_reached, infeasible, ...)."""
    score: float
    """What the searcher minimises (see ``autotune.objective``)."""
    tta_seconds: float | None = None
    """Training seconds to the first evaluation at or above the target; None if never."""
    best_metric: float | None = None
    last_metric: float | None = None
    train_seconds: float = 0.0
    """Training clock when the trial ended."""
    eval_seconds: float = 0.0
    """Wall time spent in evaluations (not counted in TTA)."""
    eval_points_full: int = 0
    """Evaluation points that read the full validation set (``autotune.train.evaluation``)."""
    eval_points_quick: int = 0
    """Evaluation points that read its subset first (the full set too when near the target)."""
    setup_seconds: float = 0.0
    """Model building and moving data to the device (not counted in TTA)."""
    loader_start_seconds: float = 0.0
    """Part of the setup: starting a Dataset task's DataLoader (its worker processes) and
    taking its first batch; 0 for tensor data."""
    compile_seconds: float = 0.0
    """Part of the training clock (so of the time-to-target): seconds the steps spent in
    ``torch.compile`` (its first steps, and any recompile, e.g. for a padded batch of a new
    length), by torch's own count; 0 with ``compile`` none."""
    inactive_knobs: list[str] = field(default_factory=list)
    """Knobs of the recipe that could not act in this trial, each with why (e.g. pin_memory
    without a GPU, DataLoader knobs for tensor data)."""
    steps: int = 0
    """Optimizer steps taken."""
    examples: int = 0
    """Training examples processed."""
    peak_memory_bytes: int | None = None
    """Measured peak per device, what the budget is checked against (``peak_memory_source``:
    ``cuda_allocated`` on a GPU, ``cpu_tracked`` tensor memory on the CPU)."""
    peak_memory_source: str | None = None
    peak_reserved_bytes: int | None = None
    """GPU only: the caching allocator's peak reservation."""
    peak_rss_bytes: int | None = None
    """The process's peak resident set size (interpreter and libraries included)."""
    predicted_peak_bytes: int | None = None
    """Predicted peak per device (``autotune.memory.predict_peak``), before training."""
    prediction_error: float | None = None
    """measured / predicted - 1 (``peak_memory_bytes`` against ``predicted_peak_bytes``)."""
    tracked_peak_bytes: int | None = None
    """CPU: peak tracked tensor memory of two optimizer steps on the largest micro-batch."""
    memory_breakdown: dict[str, int] | None = None
    """CPU: the tracked peak by kind (parameters, gradients, optimizer, activations)."""
    memory_cap_fraction: float | None = None
    """GPU: the fraction of the card the process was capped at (the budget), if capped."""
    device: str = "cpu"
    message: str = ""
    """Why the trial ended without a TTA, in words."""
    curve: list[tuple[float, float]] = field(default_factory=list)
    """(training seconds, metric) at each evaluation."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["curve"] = [list(point) for point in self.curve]
        return out

    @classmethod
    def failed(cls, status: str, message: str, limits: TrialLimits,
               device: str = "cpu") -> TrialResult:
        """A trial that ended in ``status`` (a failed or refused one) before it trained, with
        the score that status earns under ``limits`` and ``message`` saying why."""
        return cls(status=status, message=message, device=device, score=objective.score(
            status, None, None, limits.target, limits.max_train_seconds,
            limits.higher_is_better))

