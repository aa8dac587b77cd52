"""One run of a search on Ray Tune: the search phase (Optuna's proposals, the memory gate, the
deadline, the scheduler), then the confirmation phase (the fastest recipes again with more
seeds). Imported only when a search runs (Ray Tune and Optuna are heavy)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import optuna
from ray import tune

from autotune.errors import ConfigError
from autotune.results import TrialRecord
from autotune.search._ray import max_concurrent, ray_session, resources_for, trial_resources
from autotune.search._recorder import EventFn, Recorder
from autotune.search._scheduler import make_scheduler
from autotune.search._searcher import MemoryGate, StudySearcher, fail_interrupted, open_study
from autotune.search._trainable import TrialSetup, trainable
from autotune.search.plan import SearchPlan
from autotune.search.winner import confirm_points


def run(plan: SearchPlan, on_event: EventFn | None, prior: list[TrialRecord],
        start: float, on_record: Callable[[TrialRecord], None] | None = None
        ) -> list[TrialRecord]:
    """Run what is left of the search (``prior``: the records of its earlier runs, without
    interrupted trials); returns this run's records. Every record is in the run directory as
    soon as its trial ends (then handed to ``on_record``, the trackers); on Ctrl-C the trials
    running are recorded as interrupted and the ``KeyboardInterrupt`` goes on."""
    r = plan.request
    with ray_session(r.address):
        study = open_study(plan.run_dir.study_path, r.sampler, r.seed)
        if r.verbose:
            _let_logs_through()
        again = fail_interrupted(study)
        recorder = Recorder(plan, on_event, first_number=len(prior) + 1, on_record=on_record)
        setup = TrialSetup(r.model, r.task_options, plan.space, plan.baseline, plan.target,
                           plan.max_train_seconds, r.budget_bytes, r.seed, r.device,
                           r.report_interval_s, plan.workers_per_trial)
        base = trial_resources(r.device, r.cpus_per_trial, r.gpus_per_trial)
        fit = _Fitter(plan, setup, base, recorder)
        searched = [x for x in prior if x.is_search_trial]
        remaining = r.trials - len(searched)
        try:
            if remaining > 0:
                fit(_searcher(plan, study, setup, recorder, prior, again, remaining, start),
                    make_scheduler(r.scheduler, plan.max_train_seconds, r.grace_period_s,
                                   r.time_margin, _best_tta(prior),
                                   higher_is_better=plan.task.higher_is_better),
                    samples=remaining)
            reruns = confirm_points(prior + recorder.records, r.confirm_top, r.confirm_seeds,
                                    r.seed, plan.max_train_seconds)
            if reruns:
                if on_event:
                    on_event("confirming", {"trials": len(reruns), "seeds": r.confirm_seeds,
                                            "recipes": len({p["_rerun_of"] for p in reruns})})
                fit(None, None, samples=1, space={"_point": tune.grid_search(reruns)})
        except KeyboardInterrupt:
            recorder.record_interrupted()
            raise
    return recorder.records


def _let_logs_through() -> None:
    """``--verbose``: Ray's and Optuna's own INFO lines (``ray_session`` and ``open_study`` keep
    them to errors and warnings, so that progress stays readable)."""
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.INFO)


def _searcher(plan: SearchPlan, study: Any, setup: TrialSetup, recorder: Recorder,
              prior: list[TrialRecord], again: list[dict[str, Any]], remaining: int,
              start: float) -> StudySearcher:
    r = plan.request
    gate = MemoryGate(plan.task, r.budget_bytes, plan.device_type) \
        if r.budget_bytes is not None else None
    deadline = None if plan.time_budget_s is None else \
        start + plan.time_budget_s * (1.0 - plan.confirm_share())
    return StudySearcher(
        study, plan.space, lambda params: setup.recipe(params), proposals=remaining,
        points=points_to_run(plan.warm_points(), prior, again)[:remaining], gate=gate,
        on_refused=recorder.record_refused, deadline=deadline, target=plan.target,
        max_train_seconds=plan.max_train_seconds, higher_is_better=plan.task.higher_is_better,
    )


def points_to_run(warm: list[dict[str, Any]], prior: list[TrialRecord],
                  again: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points evaluated before Optuna's own proposals: the trials an interrupted run left
    unfinished (``again``), then the warm start (the baseline first), without any point that
    already ran."""
    ran = [x.params for x in prior if x.is_search_trial]
    points: list[dict[str, Any]] = []
    for point in again + warm:
        if point not in ran and point not in points:
            points.append(point)
    return points


def _best_tta(records: list[TrialRecord]) -> float | None:
    ttas = [x.tta_seconds for x in records if x.reached and x.tta_seconds]
    return min(ttas) if ttas else None


class _Fitter:
    """Runs one Tune phase with the search's trainable, resources and recorder."""

    def __init__(self, plan: SearchPlan, setup: TrialSetup, base: dict[str, float],
                 recorder: Recorder) -> None:
        r = plan.request
        self.plan = plan
        self.recorder = recorder

        def resources(params: dict[str, Any]) -> Any:
            try:
                workers = setup.recipe(params).workers
            except ConfigError:
                workers = 1  # the trial reports the invalid recipe at once
            return resources_for(base, workers, r.placement.upper())

        self.trainable: Callable[..., Any] = tune.with_resources(
            tune.with_parameters(trainable, setup=setup), resources)
        self.concurrent = max_concurrent(base, r.max_concurrent_trials)
        self.storage = r.storage or str((plan.run_dir.path / "ray").resolve())

    def __call__(self, searcher: Any, scheduler: Any, samples: int,
                 space: dict[str, Any] | None = None) -> None:
        phase = "search" if searcher is not None else "confirm"
        tuner = tune.Tuner(
            self.trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=samples,
                max_concurrent_trials=self.concurrent,
                # One trial process serves trial after trial (of the same resource shape):
                # torch and the task's data are loaded once, not per trial.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"{phase}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=self.storage,
                # verbose 1: Tune's own status table every few seconds (with --verbose)
                callbacks=[self.recorder], verbose=1 if self.plan.request.verbose else 0,
                log_to_file=True,
            ),
        )
        tuner.fit()

