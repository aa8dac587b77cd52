"""One run of a search on Ray Tune: the screening phase (each system configuration's speed,
``autotune.search.screening``), the search phase (Optuna's proposals on the kept
configurations, the memory gate, the deadline, the scheduler), then the confirmation phase
(the fastest recipes again with more seeds). Imported only when a search runs (Ray Tune and
Optuna are heavy).

The time budget ``T`` (``--time-budget``) is kept for the whole search, counted from its start
(``start``, before Ray starts): ``search_times`` splits it. Screening (when the search screens)
ends by ``T x SCREEN_SHARE``; what it has not measured then is cut. Optuna proposes until
``T x (1 - CONFIRM_SHARE)`` (less ASHA's grace period, so a last trial can still be judged; the
baseline is proposed however late). Search trials still running at
``T x (1 - CONFIRM_SHARE / 2)`` are stopped (at their last report before it: a trial reports
every ``report_interval_s``). The confirmation runs expected to end by ``T - END_MARGIN_S``
run (``fit_in_time``: each takes about its original trial's wall time, after the phase's
start-up as the search phase measured it); the rest are cut and the results say so
(``search.yaml``), and any still running then is stopped. The margin is for writing the
results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from ray import tune

from autotune.errors import ConfigError, UserError
from autotune.recipe import Recipe
from autotune.results import TrialRecord
from autotune.search._ray import (
    alive_nodes,
    cluster_summary,
    max_concurrent,
    placement_problem,
    ray_session,
    resources_for,
    simulating_gpus,
    trial_resources,
)
from autotune.search._recorder import EventFn, Recorder
from autotune.search._scheduler import Deadline, DeadlineFIFO, grace_seconds, make_scheduler
from autotune.search._screener import screen_phase
from autotune.search._searcher import MemoryGate, StudySearcher, fail_interrupted, open_study
from autotune.search._trainable import TrialSetup, trainable
from autotune.search.plan import SearchPlan
from autotune.search.settings import CONFIRM_SHARE, SCREEN_SHARE
from autotune.search.winner import confirm_points, fit_in_time

END_MARGIN_S = 5.0
"""Seconds of the time budget kept after the last trial, for writing the results (records are
written as trials end; this is the report and the summary files)."""


@dataclass(frozen=True)
class PhaseTimes:
    """When each phase of a search with a time budget ends (``time.time()`` values)."""

    proposals_end: float
    """No new search trial is proposed after this."""
    search_end: float
    """Search trials still running are stopped."""
    end: float
    """Confirmation runs still running are stopped; only writing the results is left."""
    screening_end: float | None = None
    """Screening measurements still running are cut (None: the search does not screen)."""


def search_times(start: float, budget_s: float, confirming: bool,
                 grace_s: float, screening: bool = False) -> PhaseTimes:
    """The phases of a ``budget_s`` search that began at ``start`` (see the module docstring);
    without confirmation runs the search phase has the whole budget. Screening takes its
    share from the search phase's."""
    end = start + max(0.0, budget_s - END_MARGIN_S)
    share = CONFIRM_SHARE if confirming else 0.0
    search_end = min(end, start + budget_s * (1.0 - share / 2))
    proposals_end = min(start + budget_s * (1.0 - share), search_end - grace_s)
    screening_end = min(start + budget_s * SCREEN_SHARE, proposals_end) if screening else None
    return PhaseTimes(proposals_end=max(start, proposals_end), search_end=search_end, end=end,
                      screening_end=None if screening_end is None
                      else max(start, screening_end))


@dataclass
class Confirmation:
    """What the confirmation phase did: runs planned, run, and cut for the time budget."""

    planned: int = 0
    ran: int = 0
    cut: int = 0
    seconds_left: float | None = None
    """Search time left when it began (None: no time budget)."""

    def to_dict(self) -> dict[str, Any]:
        return {"planned": self.planned, "ran": self.ran, "cut_for_time": self.cut,
                "seconds_left": None if self.seconds_left is None
                else round(self.seconds_left, 1)}


def run(plan: SearchPlan, on_event: EventFn | None, prior: list[TrialRecord],
        start: float, on_record: Callable[[TrialRecord], None] | None = None
        ) -> tuple[list[TrialRecord], Confirmation]:
    """Run what is left of the search (``prior``: the records of its earlier runs, without
    interrupted trials); returns this run's records and what its confirmation phase did. Every
    record is in the run directory as soon as its trial ends (then handed to ``on_record``, the
    trackers); on Ctrl-C the trials running are recorded as interrupted and the
    ``KeyboardInterrupt`` goes on."""
    r = plan.request
    times = None if plan.time_budget_s is None else search_times(
        start, plan.time_budget_s, plan.confirm_share() > 0,
        grace_seconds(plan.max_train_seconds, r.grace_period_s), r.screen is not False)
    confirmation = Confirmation()
    with ray_session(r.address):
        base = trial_resources(r.device, r.cpus_per_trial, r.gpus_per_trial)
        nodes = alive_nodes()
        unplaceable = placement_problem(base, 1, r.placement.upper(), nodes)
        if unplaceable:
            raise UserError(f"no trial of this search can start: {unplaceable}")
        concurrent = max_concurrent(base, r.max_concurrent_trials)
        if on_event:
            on_event("resources", {"per_trial": base, "concurrent": concurrent,
                                   "placement": r.placement, "cluster": cluster_summary(nodes),
                                   "simulated_gpus": simulating_gpus()})
        # Screening first: the convergence trials search the kept system configurations.
        plan = screen_phase(plan, _setup(plan), base, times.screening_end if times else None,
                            on_event or (lambda kind, payload: None), len(prior))
        study = open_study(plan.run_dir.study_path, r.sampler, r.seed)
        if r.verbose:
            _let_logs_through()
        again = fail_interrupted(study)
        recorder = Recorder(plan, on_event, first_number=len(prior) + 1, on_record=on_record)
        # A trial reports every report_interval_s, and is stopped at its first report after
        # a deadline: the deadlines come that much early, so the stop is in time.
        lead = r.report_interval_s
        search_deadline = Deadline(times.search_end - lead if times else None,
                                   recorder.time_stopped)
        end_deadline = Deadline(times.end - lead if times else None, recorder.time_stopped)
        setup = _setup(plan)
        fit = _Fitter(plan, setup, base, recorder, concurrent)
        searched = [x for x in prior if x.is_search_trial]
        remaining = r.trials - len(searched)
        try:
            if remaining > 0:
                fit(_searcher(plan, study, setup, recorder, prior, again, remaining,
                              times.proposals_end if times else None,
                              lambda recipe: placement_problem(
                                  base, recipe.workers, r.placement.upper(), nodes)),
                    make_scheduler(r.scheduler, plan.max_train_seconds, r.grace_period_s,
                                   r.time_margin, _best_tta(prior),
                                   higher_is_better=plan.task.higher_is_better,
                                   deadline=search_deadline),
                    samples=remaining)
            records = prior + recorder.records
            reruns = confirm_points(records, r.confirm_top, r.confirm_seeds, r.seed,
                                    plan.max_train_seconds)
            confirmation.planned = len(reruns)
            if reruns and times is not None:
                confirmation.seconds_left = max(0.0, times.end - time.time())
                # Starting a phase (Tune, the trial processes) takes time too: as long as the
                # search phase's first trial took to start, as measured.
                reruns, cut = fit_in_time(reruns, records,
                                          confirmation.seconds_left - fit.startup_seconds(),
                                          fit.concurrent)
                confirmation.cut = len(cut)
            confirmation.ran = len(reruns)
            if confirmation.planned:
                if on_event:
                    on_event("confirming", {
                        "trials": len(reruns), "seeds": r.confirm_seeds,
                        "recipes": len({p["_rerun_of"] for p in reruns}),
                        **confirmation.to_dict()})
                if reruns:
                    fit(None, DeadlineFIFO(end_deadline), samples=1,
                        space={"_point": tune.grid_search(reruns)})
        except KeyboardInterrupt:
            recorder.record_interrupted()
            raise
    return recorder.records, confirmation


def _setup(plan: SearchPlan) -> TrialSetup:
    """What every trial (and screening) process needs besides its point. Under
    ``simulating_gpus`` (tests of placement only) they train on the CPU."""
    r = plan.request
    return TrialSetup(r.model, r.task_options, plan.space, plan.baseline, plan.target,
                      plan.max_train_seconds, r.budget_bytes, r.seed,
                      "cpu" if simulating_gpus() else r.device, r.report_interval_s,
                      plan.workers_per_trial)


def _let_logs_through() -> None:
    """``--verbose``: Ray's and Optuna's own INFO lines (``ray_session`` and ``open_study`` keep
    them to errors and warnings, so that progress stays readable)."""
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.INFO)


def _searcher(plan: SearchPlan, study: Any, setup: TrialSetup, recorder: Recorder,
              prior: list[TrialRecord], again: list[dict[str, Any]], remaining: int,
              deadline: float | None, placement: Callable[[Recipe], str | None]
              ) -> StudySearcher:
    r = plan.request
    gate = MemoryGate(plan.task, r.budget_bytes, plan.device_type) \
        if r.budget_bytes is not None else None
    return StudySearcher(
        study, plan.space, lambda params: setup.recipe(params), proposals=remaining,
        points=points_to_run(plan.warm_points(), prior, again)[:remaining], gate=gate,
        placement=placement, on_refused=recorder.record_refused, deadline=deadline,
        target=plan.target,
        max_train_seconds=plan.max_train_seconds, higher_is_better=plan.task.higher_is_better,
        first_regardless=not any(x.is_baseline for x in prior),
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
                 recorder: Recorder, concurrent: int) -> None:
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
        self.concurrent = concurrent
        self.storage = r.storage or str((plan.run_dir.path / "ray").resolve())
        self.called_at: float | None = None

    def startup_seconds(self) -> float:
        """From the last phase's start to its first trial's start (0 if none started)."""
        if self.called_at is None:
            return 0.0
        starts = [t for t in self.recorder.started.values() if t >= self.called_at]
        return max(0.0, min(starts) - self.called_at) if starts else 0.0

    def __call__(self, searcher: Any, scheduler: Any, samples: int,
                 space: dict[str, Any] | None = None) -> None:
        phase = "search" if searcher is not None else "confirm"
        self.called_at = time.time()
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

