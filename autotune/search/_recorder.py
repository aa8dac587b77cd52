"""The driver's record of the search: a Ray Tune callback that turns trial events into
``TrialRecord``s, appends each one to the run directory as the trial ends (and hands it to the
trackers, ``autotune.search.tracking``), and forwards events (``started``, ``progress`` with each
intermediate result, ``finished``) to whoever renders progress."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

from autotune import objective
from autotune.errors import ConfigError
from autotune.recipe import Recipe
from autotune.results import TrialRecord, ended_score, ended_status
from autotune.search._ray import raise_if_interrupted
from autotune.search._trainable import recipe_for, search_params, unwrap
from autotune.search.plan import SearchPlan
from autotune.search.progress import TrialProgress
from autotune.search.provenance import trial_provenance
from autotune.search.winner import NOT_PLACED
from autotune.units import format_bytes

EventFn = Callable[[str, Any], None]


class Recorder(Callback):
    """See the module docstring. ``records`` holds this run's records in the order trials
    ended."""

    def __init__(self, plan: SearchPlan, on_event: EventFn | None, first_number: int,
                 on_record: Callable[[TrialRecord], None] | None = None) -> None:
        self.plan = plan
        self.on_event = on_event
        self.on_record = on_record
        """Called with each record once it is in the run directory (the trackers)."""
        self.provenance = trial_provenance(plan.device_type)
        """The driver's, for records of trials that reported none (refused, crashed early)."""
        self.baseline_point = plan.baseline_point
        self.warm = [p for p in plan.warm_points() if p != self.baseline_point]
        self.next_number = first_number
        self.records: list[TrialRecord] = []
        self.numbers: dict[str, int] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.running: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        self.time_stopped: set[str] = set()
        """Ids of the trials a scheduler stopped because the time budget's phase ended
        (``autotune.search._scheduler.Deadline``)."""

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment's state (for a restore); the event
        and record handlers belong to this driver (a status display's thread and lock, an open
        MLflow client), so a pickled copy goes without them."""
        return {**self.__dict__, "on_event": None, "on_record": None}

    # -- identity of a trial ----------------------------------------------------------------
    def _number(self, key: str) -> int:
        if key not in self.numbers:
            self.numbers[key] = self.next_number
            self.next_number += 1
        return self.numbers[key]

    def _base(self, trial: Any) -> TrialRecord:
        point = unwrap(trial.config)
        params = search_params(trial.config)
        rerun_of = point.get("_rerun_of")
        try:
            recipe: dict[str, Any] | None = self._recipe(params).to_dict()
        except (ConfigError, TypeError):
            recipe = None
        return TrialRecord(
            trial=self._number(trial.trial_id), status=objective.RUNNING,
            trial_id=trial.trial_id, study_trial=point.get("_study_trial"),
            is_baseline=params == self.baseline_point and rerun_of is None,
            warm_start=params in self.warm and rerun_of is None,
            warm_start_name=self.plan.warm_name(params)
            if params in self.warm and rerun_of is None else None, rerun_of=rerun_of,
            seed=int(point.get("_seed", self.plan.request.seed)), recipe=recipe, params=params,
            prediction=point.get("_prediction"), started_at=self.started.get(trial.trial_id),
        )

    def _recipe(self, params: dict[str, Any]) -> Recipe:
        p = self.plan
        return recipe_for(params, p.space, p.baseline, p.workers_per_trial)

    # -- Tune's callbacks -------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        raise_if_interrupted()
        self.running[trial.trial_id] = trial
        self.started[trial.trial_id] = time.time()
        if self.on_event:
            self.on_event("started", self._base(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self.last[trial.trial_id] = dict(result)
        raise_if_interrupted()
        if self.on_event and not result.get("final") and result.get("train_seconds") is not None:
            point = unwrap(trial.config)
            self.on_event("progress", TrialProgress(
                trial=self._number(trial.trial_id), train_seconds=float(result["train_seconds"]),
                max_train_seconds=float(point.get("_max_train_seconds",
                                                  self.plan.max_train_seconds)),
                last_metric=result.get("last_metric"), best_metric=result.get("best_metric"),
                rerun_of=point.get("_rerun_of"),
                seed=int(point.get("_seed", self.plan.request.seed))))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, error=None)
        raise_if_interrupted()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        message = "trial process failed"
        path = getattr(trial, "error_file", None)
        if path and os.path.exists(path):
            with open(path) as f:
                lines = [ln for ln in f.read().strip().splitlines() if ln.strip()]
            message = lines[-1][:500] if lines else message
        self._finish(trial, error=message,
                     error_file=str(path) if path and os.path.exists(path) else None)

    # -- records ----------------------------------------------------------------------------
    def record_interrupted(self) -> None:
        """Record the trials still running when the search was interrupted, with what they
        had reported so far."""
        for trial in list(self.running.values()):
            self._finish(trial, error=None, interrupted=True)

    def record_refused(self, params: dict[str, Any], recipe: Recipe,
                       prediction: dict[str, Any], study_trial: int,
                       reason: str | None = None) -> None:
        """A proposal refused before launch, infeasible: by the memory gate (``reason`` None;
        with its prediction), or because the cluster cannot hold its trial (``reason``)."""
        peak = prediction.get("peak_bytes")
        p = self.plan
        message = f"{NOT_PLACED}{reason}: not launched" if reason else (
            f"predicted peak {format_bytes(peak)} per device exceeds the budget "
            f"{format_bytes(p.request.budget_bytes)} (with the safety margin): not launched")
        record = TrialRecord(
            trial=self._number(f"refused-{study_trial}"), status=objective.INFEASIBLE,
            score=objective.score(objective.INFEASIBLE, None, None, p.target,
                                  p.max_train_seconds),
            study_trial=study_trial, is_baseline=params == self.baseline_point,
            warm_start=params in self.warm,
            warm_start_name=p.warm_name(params) if params in self.warm else None,
            seed=p.request.seed, recipe=recipe.to_dict(),
            params=params, launched=False, prediction=prediction, predicted_peak_bytes=peak,
            message=message,
            finished_at=time.time(), provenance=dict(self.provenance),
        )
        self._write(record)

    def _finish(self, trial: Any, error: str | None, interrupted: bool = False,
                error_file: str | None = None) -> None:
        self.running.pop(trial.trial_id, None)
        result = self.last.get(trial.trial_id) or dict(trial.last_result or {})
        status = objective.INTERRUPTED if interrupted else ended_status(result, error is not None)
        if interrupted:
            error = "the search was interrupted while this trial ran"
        p = self.plan
        record = self._base(trial).with_measurements(result)
        record.status = status
        record.score = ended_score(status, result, p.target, p.max_train_seconds,
                                   p.task.higher_is_better)
        record.message = error or _stopped_message(
            status, result, trial.trial_id in self.time_stopped) or result.get("message", "")
        record.finished_at = time.time()
        for key in ("node_ip", "node_id", "hostname", "worker_nodes", "worker_gpus"):
            setattr(record, key, result.get(key))
        record.error_file = error_file
        provenance = result.get("provenance")
        record.provenance = dict(provenance) if isinstance(provenance, dict) \
            else dict(self.provenance)
        if status != objective.REACHED:
            record.tta_seconds = None
        if record.predicted_peak_bytes is None and record.prediction:
            record.predicted_peak_bytes = record.prediction.get("peak_bytes")
        self._write(record)

    def _write(self, record: TrialRecord) -> None:
        self.plan.run_dir.append(record)
        self.records.append(record)
        if self.on_event:
            self.on_event("finished", record)
        if self.on_record:
            self.on_record(record)


def _stopped_message(status: str, result: dict[str, Any], for_time: bool = False) -> str:
    if status != objective.STOPPED:
        return ""
    best = result.get("best_metric")
    seconds = result.get("train_seconds") or 0.0
    shown = f"{best:.4f}" if isinstance(best, (int, float)) else "-"
    if for_time:
        return (f"stopped at {seconds:.1f}s of training (metric {shown}): the search's time "
                "budget (--time-budget) for this phase was spent")
    return (f"stopped early at {seconds:.1f}s of training (metric {shown}): behind other trials "
            "at the same training time, or already slower than the best time-to-target")
