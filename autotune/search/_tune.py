"""The search: Ray Tune runs trials, Optuna proposes recipes, ASHA stops clearly losing trials.

This is the only module that imports Ray Tune and Optuna. It emits events (trial started,
trial finished) to a callback that the CLI turns into progress lines, and writes every finished
trial to the results directory as soon as it ends.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune import objective
from autotune.errors import ConfigError, UserError
from autotune.recipe import Recipe
from autotune.space import SearchSpace
from autotune.units import format_bytes

EventFn = Callable[[str, dict[str, Any]], None]
"""Receives ``("started" | "finished", record)`` as trials start and end."""

TRIALS_FILE = "trials.jsonl"


@dataclass(frozen=True)
class SearchConfig:
    """Everything one search needs; plain data, written to ``search.json`` in the results."""

    model: str
    """Task name: built-in (``bert``) or ``package.module:function``."""
    space: SearchSpace
    baseline: Recipe
    target: float
    max_train_seconds: float
    results_dir: Path
    budget_bytes: int | None = None
    trials: int = 12
    """Trials to run at most, the baseline included."""
    time_budget_s: float | None = None
    """No trial starts after this many seconds of search (running trials finish)."""
    seed: int = 0
    """Seeds Optuna's sampler and every trial's weights and data order (the same for all trials,
    so trials differ only by their recipes)."""
    task_options: dict[str, Any] = field(default_factory=dict)
    suggestions: tuple[Recipe, ...] = ()
    """Known-good recipes evaluated right after the baseline (warm start); those outside the
    space are skipped."""
    device: str | None = None
    """Device for trials; None picks a GPU where there is one, else the CPU."""
    address: str | None = None
    """Ray cluster to connect to (``host:port``, ``auto``, or ``ray://``); None uses
    ``RAY_ADDRESS`` when set, else starts a local Ray instance."""
    cpus_per_trial: float | None = None
    """CPUs one trial (or each worker of a multi-worker trial on GPUs) holds; default: on GPUs
    the node's CPUs per GPU, on CPUs a whole node (the smallest), so trials do not share
    cores and their timings stay comparable."""
    gpus_per_trial: float | None = None
    """GPUs one trial holds (per worker for multi-worker trials); default 1 where the cluster
    has GPUs, else 0."""
    max_concurrent_trials: int | None = None
    """Trials running at once at most; default: as many as the cluster's resources fit."""
    storage_path: str | None = None
    """Where Ray Tune keeps its experiment files (a shared filesystem or ``s3://``/``gs://``
    URI on a cluster); default ``results_dir/ray``. autotune's own records are always written
    by the driver to ``results_dir``."""
    confirm_top: int = 3
    """After the search, the fastest ``confirm_top`` recipes (and the baseline, if it reached
    the target) run again with ``confirm_seeds`` further seeds, and the winner is the recipe
    with the lowest median time-to-accuracy: one lucky seed does not make a winner."""
    confirm_seeds: int = 2
    confirm_share: float = 0.25
    """Share of ``time_budget_s`` kept for the confirmation runs: the search proposes no new
    trial after ``(1 - confirm_share) x time_budget_s``; confirmation runs then run to the
    end."""
    sampler: str = "tpe"
    """``tpe`` (Optuna's TPE, the default) or ``random`` (Optuna's RandomSampler; for
    benchmarks)."""
    scheduler: str = "asha"
    """``asha`` (ASHA + time-aware stopping, the default) or ``fifo`` (every trial runs to the
    target or its limit; for benchmarks)."""
    warm_start: bool = True
    """Evaluate the task's suggested recipes right after the baseline."""
    resume: bool = False
    """Continue the search whose records are in ``results_dir``: finished trials are not run
    again and Optuna starts from their measurements; trials that were running when it stopped
    run again."""
    report_interval_s: float = 5.0
    """Least wall time between two intermediate reports of a trial (each costs time)."""
    grace_period_s: float | None = None
    """Training seconds before the early-stopping scheduler may stop a trial; default a sixth
    of ``max_train_seconds``."""
    workers_per_trial: int = 1
    """Workers (processes, one per GPU on a GPU machine) of a trial whose recipe is
    data-parallel or sharded, unless the space sets ``workers`` itself."""
    placement_strategy: str = "PACK"
    """How Ray places a multi-worker trial's workers: ``PACK`` (one machine where they fit) or
    ``SPREAD`` (over machines)."""
    time_margin: float = 1.5
    """A trial still short of the target after this many times the best time-to-accuracy so far
    is stopped: it can no longer win."""


@dataclass
class SearchOutcome:
    """What a finished search measured: every trial's record, in the order they ended."""

    records: list[dict[str, Any]]
    wall_seconds: float
    ray_dir: str


def run_search(config: SearchConfig, on_event: EventFn | None = None) -> SearchOutcome:
    """Run the search described by ``config``; every finished trial is appended to
    ``results_dir/trials.jsonl`` as it ends, so nothing measured is lost if the search stops.
    With ``config.resume``, the trials already in that file count towards ``config.trials``
    and seed the sampler; the returned records include them."""
    import ray
    from ray import tune

    config.results_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    prior = read_records(config.results_dir) if config.resume else []
    done = [r for r in prior if r.get("status") != objective.INTERRUPTED]
    searched = [r for r in done if r.get("rerun_of") is None]
    remaining = config.trials - len(searched)
    storage = config.storage_path or str((config.results_dir / "ray").resolve())
    if remaining <= 0 and not confirm_points(config, done):
        return SearchOutcome(records=done, wall_seconds=0.0, ray_dir=storage)
    own_ray = _init_ray(config)
    # After ray.init, which installs its own SIGTERM handler in the driver: SIGTERM (a job
    # scheduler, `kill`) ends the search like Ctrl-C, so running trials are recorded.
    previous_sigterm = _sigterm_as_interrupt()
    try:
        warm = warm_start_points(config)
        points = _points_to_run(config, warm, prior, remaining)
        recorder = _Recorder(config, on_event, warm_points=warm, first_number=len(done) + 1,
                             prior=done)
        base = _trial_resources(config)
        gate = None
        if config.budget_bytes is not None:
            gate = _MemoryGate(config, recorder, "cuda" if base.get("gpu") else "cpu")
            recorder.predictions = gate.predictions
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, setup=_TrialSetup.from_config(config)),
            lambda params: _resources_for(base, params, config),
        )
        concurrent = _max_concurrent(config, base)
        phases = []
        if remaining > 0:
            phases.append(("search", _make_searcher(config, points, start, searched, gate),
                           _make_scheduler(config, done), remaining))
        phases.append(("confirm", None, None, 0))
        for phase, searcher, scheduler, samples in phases:
            space = None
            if phase == "confirm":
                reruns = confirm_points(config, done + recorder.records)
                if not reruns:
                    break
                if on_event:
                    on_event("confirming", {"trials": len(reruns), "seeds": config.confirm_seeds,
                                            "recipes": len({p["_rerun_of"] for p in reruns})})
                space = {"_point": tune.grid_search(reruns)}
                samples = 1
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=scheduler,
                    num_samples=samples,
                    max_concurrent_trials=concurrent,
                    # One trial process serves trial after trial (of the same resource shape):
                    # torch and the task's data are loaded once, not per trial.
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=f"{phase}-{time.strftime('%Y%m%d-%H%M%S')}",
                    storage_path=storage,
                    callbacks=[recorder],
                    verbose=0,
                    log_to_file=True,
                ),
            )
            try:
                tuner.fit()
            except KeyboardInterrupt:
                recorder.record_interrupted()
                raise
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if own_ray:
            ray.shutdown()
    return SearchOutcome(
        records=done + recorder.records,
        wall_seconds=time.time() - start,
        ray_dir=storage,
    )


def confirm_points(config: SearchConfig, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The confirmation runs still to do: for the ``confirm_top`` fastest distinct recipes
    that reached the target, and the baseline if it did, each further seed not yet run. A
    point is the trial's params plus ``_seed``, ``_rerun_of`` (the original trial's number)
    and ``_max_train_seconds`` (3x the original's time-to-accuracy: a rerun slower than that
    cannot change the ranking)."""
    if config.confirm_top <= 0 or config.confirm_seeds <= 0:
        return []
    originals = [r for r in records if r.get("rerun_of") is None
                 and r.get("status") == objective.REACHED and r.get("tta_seconds")]
    ranked: list[dict[str, Any]] = []
    for r in sorted(originals, key=lambda r: r["tta_seconds"]):
        if all(r.get("recipe") != other.get("recipe") for other in ranked):
            ranked.append(r)
    chosen = ranked[: config.confirm_top]
    baseline = next((r for r in ranked if r.get("is_baseline")), None)
    if baseline is not None and baseline not in chosen:
        chosen.append(baseline)
    points = []
    for r in chosen:
        seen = {x.get("seed") for x in records if x.get("rerun_of") == r["trial"]
                and x.get("status") != objective.INTERRUPTED}
        for k in range(1, config.confirm_seeds + 1):
            if config.seed + k in seen:
                continue
            points.append({**r["params"], "_seed": config.seed + k, "_rerun_of": r["trial"],
                           "_max_train_seconds": min(config.max_train_seconds,
                                                     3.0 * r["tta_seconds"] + 1.0)})
    return points


def _unwrap(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's point: a confirmation run's config is ``{"_point": point}`` (a grid)."""
    return dict(config.get("_point", config))


def _search_params(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's config without the confirmation-run keys (``_seed``, ...)."""
    return {k: v for k, v in _unwrap(params).items() if not k.startswith("_")}


def _sigterm_as_interrupt() -> Any:
    """Make SIGTERM raise KeyboardInterrupt in the main thread; returns the previous handler
    (None when not on the main thread, where handlers cannot be set)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _points_to_run(config: SearchConfig, warm: list[dict[str, Any]],
                   prior: list[dict[str, Any]], remaining: int) -> list[dict[str, Any]]:
    """Points evaluated before Optuna's own proposals: on a fresh search the warm start; on a
    resumed one, the trials that were interrupted, then the warm-start points not yet run."""
    if not prior:
        return warm[:remaining]
    ran = [r.get("params") for r in prior if r.get("status") != objective.INTERRUPTED]
    again = [r["params"] for r in prior
             if r.get("status") == objective.INTERRUPTED and r.get("params") not in ran]
    points: list[dict[str, Any]] = []
    for point in again + warm:
        if point not in ran and point not in points:
            points.append(point)
    return points[:remaining]


def _init_ray(config: SearchConfig) -> bool:
    """Connect to ``config.address`` or start a local Ray; True when we started it."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C reaches autotune, which records the trials in flight and says where results are.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # A trial that fails before its first evaluation has no accuracy to report; the scheduler
    # then skips that result instead of Tune failing the search.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if ray.is_initialized():
        return False
    # Trial processes import user tasks (package.module:function) the way the driver does:
    # from the directory the command runs in (on a cluster: the same path on every node).
    paths = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                     runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(
                f"cannot connect to the Ray cluster at {address!r}: {str(exc).splitlines()[0]}. "
                "Start one with `ray start --head` (see README: Running on a cluster), or leave "
                "out --address (and RAY_ADDRESS) to run on this machine."
            ) from None
        return True
    temp_dir = tempfile.mkdtemp(prefix="autotune_ray_", dir="/tmp")
    ray.init(
        num_cpus=os.cpu_count() or 1,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp_dir,
        configure_logging=True,
        logging_level="ERROR",
    )
    return True


def _trial_resources(config: SearchConfig) -> dict[str, float]:
    """What one trial holds. Where there are GPUs: one GPU and that GPU's share of its node's
    CPUs, so trials run one per GPU. On CPUs: a whole node (the smallest alive node, so a trial
    fits on any), so trials do not share cores and their timings are not distorted by each
    other. ``cpus_per_trial``/``gpus_per_trial`` override either."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    gpu_nodes = [n for n in nodes if n.get("GPU", 0) > 0]
    use_gpu = bool(gpu_nodes) and config.device != "cpu"
    gpus = config.gpus_per_trial if config.gpus_per_trial is not None else (1 if use_gpu else 0)
    if config.cpus_per_trial is not None:
        cpus = config.cpus_per_trial
    elif gpus:
        cpus = max(1, min(int(n.get("CPU", 0) // n["GPU"]) for n in gpu_nodes))
    else:
        cpus = max(1, min((int(n["CPU"]) for n in nodes if n.get("CPU", 0) >= 1), default=1))
    out: dict[str, float] = {"cpu": cpus}
    if gpus:
        out["gpu"] = gpus
    return out


def _resources_for(base: dict[str, float], params: dict[str, Any],
                   config: SearchConfig) -> Any:
    """A single-worker trial holds ``base``; a multi-worker trial holds a placement group with
    a bundle per worker that Ray places (``autotune.search._workers``): a GPU each on GPU
    machines, a share of ``base``'s CPUs each on CPUs."""
    from autotune.search._workers import placement

    try:
        workers = recipe_for(_search_params(params), config.space, config.baseline,
                             config.workers_per_trial).workers
    except ConfigError:
        return base  # the trial reports the invalid recipe at once
    if workers <= 1:
        return base
    return placement(workers, base["cpu"], bool(base.get("gpu")), config.placement_strategy)


def _max_concurrent(config: SearchConfig, base: dict[str, float]) -> int:
    """As many trials as the cluster's nodes fit with ``base`` each (capped by
    ``max_concurrent_trials``)."""
    import ray

    fit = 0
    for node in (n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")):
        by_cpu = int(node.get("CPU", 0) // base["cpu"]) if base["cpu"] else 10**6
        by_gpu = int(node.get("GPU", 0) // base["gpu"]) if base.get("gpu") else 10**6
        fit += min(by_cpu, by_gpu)
    fit = max(1, fit)
    return min(fit, config.max_concurrent_trials) if config.max_concurrent_trials else fit


def warm_start_points(config: SearchConfig) -> list[dict[str, Any]]:
    """The baseline's point first, then each suggested recipe's that lies in the space."""
    points = [config.space.point_for(config.baseline)]
    for recipe in config.suggestions if config.warm_start else ():
        try:
            point = config.space.point_for(recipe)
        except ConfigError:
            continue
        if point not in points:
            points.append(point)
    return points[: config.trials]


def _make_searcher(config: SearchConfig, points: list[dict[str, Any]], start: float,
                   done: list[dict[str, Any]] | None = None, gate: Any = None) -> Any:
    """OptunaSearch (TPE, seeded) over the space's define-by-run ``suggest``, evaluating
    ``points`` first. ``done`` (a resumed search's finished trials) are added to the study
    as completed trials with their scores, so the sampler learns from them."""
    import optuna
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    share = config.confirm_share if config.confirm_top > 0 and config.confirm_seeds > 0 else 0.0
    deadline = None if config.time_budget_s is None else \
        start + config.time_budget_s * (1.0 - share)

    class _DeadlineOptunaSearch(OptunaSearch):
        """Optuna's proposals until the search's time budget is spent; then no new trials.
        With a ``gate`` (the memory check), a proposal predicted not to fit the budget is
        never launched: the gate records it, Optuna is told its infeasible score at once, and
        the next proposal is asked for."""

        def suggest(self, trial_id: str) -> dict | None:
            for attempt in range(MAX_SKIPPED_IN_A_ROW):
                if deadline is not None and time.time() > deadline:
                    return Searcher.FINISHED
                if gate is None:
                    return super().suggest(trial_id)
                if gate.exhausted():
                    return Searcher.FINISHED
                probe = f"{trial_id}#{attempt}"
                point = super().suggest(probe)
                if not isinstance(point, dict):
                    return point
                # OptunaSearch keeps the ask()ed Optuna trial under the id it was given.
                ot_trial = self._ot_trials.pop(probe)
                penalty = gate.reject(point)
                if penalty is None:
                    self._ot_trials[trial_id] = ot_trial
                    # The trial takes the gate's prediction instead of tracing the step again.
                    peak = gate.predictions.get(_key(point), {}).get("peak_bytes")
                    return {**point, "_predicted_peak_bytes": peak} if peak else point
                self._ot_study.tell(ot_trial, penalty)
            return Searcher.FINISHED

    space = config.space
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="autotune", direction="minimize")
    for record in done or []:
        trial = _frozen_trial(space, record)
        if trial is not None:
            study.add_trial(trial)
    return _DeadlineOptunaSearch(
        space=space.suggest,
        metric="score",
        mode="min",
        points_to_evaluate=points or None,
        # A resumed search draws a different stream, so it does not re-propose the same points.
        sampler=optuna.samplers.RandomSampler(seed=config.seed + len(done or []))
        if config.sampler == "random" else
        optuna.samplers.TPESampler(seed=config.seed + len(done or []), n_startup_trials=5),
        storage=storage,
        study_name="autotune",
    )


def _frozen_trial(space: SearchSpace, record: dict[str, Any]) -> Any:
    """A finished trial's record as a completed Optuna trial (its params, their distributions
    as the space defines them, and its score); None if the space no longer fits it."""
    import optuna

    params = record.get("params") or {}
    fixed = optuna.trial.FixedTrial(params)
    try:
        space.suggest(fixed)
    except (ValueError, KeyError, ConfigError):
        return None
    dists = fixed.distributions
    score = record.get("score")
    if score is None or not math.isfinite(score):
        return None
    return optuna.trial.create_trial(
        params={k: params[k] for k in dists}, distributions=dists, value=float(score))


SAFETY_PCT = 5
"""The memory gate's safety margin, in percent (``autotune.memory.SAFETY_MARGIN``)."""
MAX_SKIPPED_IN_A_ROW = 200
"""Proposals predicted over budget before the search gives up asking (the space hardly fits)."""


class _MemoryGate:
    """The memory check before a trial is launched (``autotune.memory.check_budget``): a
    recipe whose predicted peak per device does not fit ``budget_bytes`` is recorded as
    infeasible with its prediction, and never runs. Predictions are cached by model and
    micro-batch, so the same shape is traced once per search. Launched trials carry their
    prediction into their record, beside the measured peak."""

    def __init__(self, config: SearchConfig, recorder: _Recorder, device_type: str) -> None:
        self.config = config
        self.recorder = recorder
        self.device_type = device_type
        self.task: Any = None
        self.predictions: dict[str, dict[str, Any]] = {}

    def exhausted(self) -> bool:
        """Every trial of ``config.trials`` has been recorded or is running."""
        searched = [r for r in self.recorder.all_records() if r.get("rerun_of") is None]
        return len(searched) + len(self.recorder.running) >= self.config.trials

    def predict(self, point: dict[str, Any]) -> tuple[bool, dict[str, Any] | None, Recipe]:
        from autotune.memory import check_budget
        from autotune.train.parallel import unsupported_reason

        c = self.config
        recipe = recipe_for(_search_params(point), c.space, c.baseline, c.workers_per_trial)
        if unsupported_reason(recipe, self.device_type):
            return True, None, recipe  # the trial itself reports why it cannot run
        if self.task is None:
            self.task = _task_for(c.model, self.device_type, c.task_options)
        fits, prediction = check_budget(self.task, recipe, c.budget_bytes, self.device_type)
        return fits, prediction.to_dict(), recipe

    def reject(self, point: dict[str, Any]) -> float | None:
        """None when ``point`` may run; else its (infeasible) score, after recording it."""
        try:
            fits, prediction, recipe = self.predict(point)
        except ConfigError:
            return None  # the trial reports the invalid recipe
        except Exception as exc:  # noqa: BLE001 - a failed prediction must not stop a search
            self.predictions[_key(point)] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            return None
        if prediction is not None:
            self.predictions[_key(point)] = prediction
        if fits:
            return None
        self.recorder.record_not_launched(point, recipe, prediction or {})
        return objective.score(objective.INFEASIBLE, None, None, self.config.target,
                               self.config.max_train_seconds)


def _key(point: dict[str, Any]) -> str:
    return json.dumps(_search_params(point), sort_keys=True, default=str)


def _make_scheduler(config: SearchConfig, done: list[dict[str, Any]] | None = None) -> Any:
    """ASHA on accuracy at equal training time, plus time-aware stopping (see
    ``TimeAwareASHA``); ``fifo`` lets every trial run to its end."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

    if config.scheduler == "fifo":
        return FIFOScheduler()

    class TimeAwareASHA(ASHAScheduler):
        """ASHA, and: a trial that has trained ``time_margin`` x the best time-to-accuracy so far
        without reaching the target cannot win, so it stops. ASHA alone lets such trials run:
        the fastest trials end before the late rungs, which then hold only slow trials."""

        def __init__(self) -> None:
            super().__init__(
                time_attr="train_seconds",
                metric="best_metric",
                mode="max",
                max_t=config.max_train_seconds * 10,  # trials stop themselves at their limit
                grace_period=config.grace_period_s or max(1.0, config.max_train_seconds / 6),
                reduction_factor=2,
            )
            ttas = [r["tta_seconds"] for r in done or []
                    if r.get("status") == objective.REACHED and r.get("tta_seconds")]
            self.best_tta: float | None = min(ttas) if ttas else None

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            seconds = result.get("train_seconds")
            if (
                self.best_tta is not None
                and seconds is not None
                and result.get("status") != objective.REACHED
                and seconds > config.time_margin * self.best_tta
            ):
                return TrialScheduler.STOP
            return super().on_trial_result(tune_controller, trial, result)

        def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
            tta = result.get("tta_seconds") if result.get("status") == objective.REACHED else None
            if tta is not None and (self.best_tta is None or tta < self.best_tta):
                self.best_tta = tta
            super().on_trial_complete(tune_controller, trial, result)

    return TimeAwareASHA()


# -- the trial side -------------------------------------------------------------------------


@dataclass(frozen=True)
class _TrialSetup:
    """What every trial process needs besides its sampled point (sent once via Ray)."""

    model: str
    task_options: dict[str, Any]
    space: SearchSpace
    baseline: Recipe
    target: float
    max_train_seconds: float
    budget_bytes: int | None
    seed: int
    device: str | None
    report_interval_s: float
    workers_per_trial: int

    @classmethod
    def from_config(cls, c: SearchConfig) -> _TrialSetup:
        return cls(c.model, c.task_options, c.space, c.baseline, c.target, c.max_train_seconds,
                   c.budget_bytes, c.seed, c.device, c.report_interval_s, c.workers_per_trial)


def recipe_for(params: dict[str, Any], space: SearchSpace, baseline: Recipe,
               workers_per_trial: int) -> Recipe:
    """The recipe of a sampled point; parallel modes get ``workers_per_trial`` workers unless
    the space samples ``workers``."""
    params = dict(params)
    if params.get("parallelism", baseline.parallelism) != "single" and "workers" not in params:
        params["workers"] = workers_per_trial
    return space.to_recipe(params, baseline)


def _trainable(params: dict[str, Any], setup: _TrialSetup) -> None:
    """One Ray Tune trial: build the recipe from the sampled point and run it for real."""
    import ray
    from ray import tune

    from autotune.search._workers import RayLauncher
    from autotune.train import TrialLimits, pick_device, run_trial

    params = _unwrap(params)
    seed = int(params.get("_seed", setup.seed))
    max_train = float(params.get("_max_train_seconds", setup.max_train_seconds))
    predicted = params.get("_predicted_peak_bytes")
    params = _search_params(params)
    try:
        recipe = recipe_for(params, setup.space, setup.baseline, setup.workers_per_trial)
    except ConfigError as exc:
        tune.report(_invalid_result(exc, params, setup))
        return
    device = pick_device(setup.device)
    task = _task_for(setup.model, device.type, setup.task_options)
    limits = TrialLimits(
        max_train_seconds=max_train,
        eval_every_seconds=task.eval_every_seconds,
        target=setup.target,
        budget_bytes=setup.budget_bytes,
        seed=seed,
        predicted_peak_bytes=predicted,
    )
    reporter = _ThrottledReport(setup.report_interval_s, recipe)
    node = ray.get_runtime_context().get_node_id()
    reporter.extra.update(node_id=node, worker_nodes=[node], seed=seed)
    launcher = RayLauncher(
        on_placed=lambda nodes: reporter.extra.update(worker_nodes=[n["node_id"] for n in nodes])
    )
    run_trial(task, recipe, limits, report=reporter, device=str(device), launch=launcher)


_TASKS: dict[str, Any] = {}


def _task_for(model: str, device_type: str, options: dict[str, Any]) -> Any:
    """The task, built once per trial process (Tune reuses the process for later trials):
    its data is read and tokenized once, not per trial. Every trial builds its own model."""
    from autotune.tasks import load_task

    key = json.dumps([model, device_type, options], sort_keys=True, default=str)
    if key not in _TASKS:
        _TASKS.clear()
        _TASKS[key] = load_task(model, device_type, options)
    return _TASKS[key]


class _ThrottledReport:
    """Forwards a trial's progress to Ray Tune at most every ``interval`` seconds (each report
    costs time), and always the final result."""

    def __init__(self, interval: float, recipe: Recipe) -> None:
        self.interval = interval
        self.recipe = recipe.to_dict()
        self.last = 0.0
        self.extra: dict[str, Any] = {}
        """Sent with every report: the trial's node and its workers' nodes (Ray node ids)."""

    def __call__(self, progress: dict[str, Any]) -> None:
        from ray import tune

        now = time.time()
        if not progress.get("final") and now - self.last < self.interval:
            return
        self.last = now
        metrics = {k: v for k, v in progress.items() if v is not None}
        metrics["recipe"] = self.recipe
        metrics.update(self.extra)
        if not progress.get("final"):
            metrics.pop("curve", None)
        tune.report(metrics)


def _invalid_result(exc: ConfigError, params: dict, setup: _TrialSetup) -> dict[str, Any]:
    return {
        "status": objective.ERROR,
        "score": objective.score(
            objective.ERROR, None, None, setup.target, setup.max_train_seconds
        ),
        "message": "invalid recipe: " + "; ".join(exc.problems),
        "params": params,
        "final": True,
    }


# -- the driver side: progress events and persistence ---------------------------------------


def _load_tune_callback() -> type:
    from ray.tune import Callback

    return Callback


class _Recorder(_load_tune_callback()):  # type: ignore[misc]
    """Ray Tune callback on the driver: turns trial events into records, appends each finished
    trial to ``trials.jsonl`` at once, and forwards events to the CLI."""

    def __init__(self, config: SearchConfig, on_event: EventFn | None,
                 warm_points: list[dict[str, Any]] | None = None, first_number: int = 1,
                 prior: list[dict[str, Any]] | None = None) -> None:
        self.config = config
        self.prior = list(prior or [])
        self.predictions: dict[str, dict[str, Any]] = {}
        """Memory predictions by point (from the memory gate), put in each trial's record."""
        self.baseline_point = config.space.point_for(config.baseline)
        self.warm_points = [p for p in warm_points or [] if p != self.baseline_point]
        self.first_number = first_number
        self.on_event = on_event
        self.records: list[dict[str, Any]] = []
        self.numbers: dict[str, int] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.running: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        self.path = config.results_dir / TRIALS_FILE

    def all_records(self) -> list[dict[str, Any]]:
        """Records of earlier runs of this search (resume) and of this one."""
        return self.prior + self.records

    def record_not_launched(self, point: dict[str, Any], recipe: Recipe,
                            prediction: dict[str, Any]) -> None:
        """A proposal the memory gate refused: recorded as infeasible, with its prediction."""
        number = len(self.numbers) + self.first_number
        self.numbers[f"not-launched-{number}"] = number
        params = _search_params(point)
        budget = self.config.budget_bytes or 0
        peak = prediction.get("peak_bytes")
        record = {
            "trial": number, "trial_id": None,
            "is_baseline": params == self.baseline_point, "warm_start": params in self.warm_points,
            "rerun_of": None, "seed": self.config.seed, "recipe": recipe.to_dict(),
            "params": params, "status": objective.INFEASIBLE, "launched": False,
            "score": objective.score(objective.INFEASIBLE, None, None, self.config.target,
                                     self.config.max_train_seconds),
            "message": (f"predicted peak {format_bytes(peak)} per device exceeds the budget "
                        f"{format_bytes(budget)} (with the {SAFETY_PCT}% safety margin): not "
                        "launched"),
            "predicted_peak_bytes": peak, "prediction": prediction,
            "started_at": None, "finished_at": time.time(),
        }
        self._write(record)

    def _number(self, trial: Any) -> int:
        if trial.trial_id not in self.numbers:
            self.numbers[trial.trial_id] = len(self.numbers) + self.first_number
        return self.numbers[trial.trial_id]

    def _recipe(self, trial: Any) -> dict[str, Any] | None:
        try:
            c = self.config
            return recipe_for(_search_params(trial.config), c.space, c.baseline,
                              c.workers_per_trial).to_dict()
        except (ConfigError, TypeError):
            return None

    def _roles(self, trial: Any) -> dict[str, Any]:
        """Baseline / warm start / confirmation run of which trial, with which seed."""
        params = _search_params(trial.config)
        point = _unwrap(trial.config)
        rerun_of = point.get("_rerun_of")
        return {"is_baseline": params == self.baseline_point and rerun_of is None,
                "warm_start": params in self.warm_points and rerun_of is None,
                "rerun_of": rerun_of, "seed": point.get("_seed", self.config.seed)}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running[trial.trial_id] = trial
        self.started[trial.trial_id] = time.time()
        number = self._number(trial)
        record = {"trial": number, "trial_id": trial.trial_id, "recipe": self._recipe(trial),
                  "params": _search_params(trial.config), **self._roles(trial)}
        if self.on_event:
            self.on_event("started", record)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self.last[trial.trial_id] = dict(result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = self.last.get(trial.trial_id) or dict(trial.last_result or {})
        self._finish(trial, result, error=None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = self.last.get(trial.trial_id) or dict(trial.last_result or {})
        message = "trial process failed"
        if getattr(trial, "error_file", None) and os.path.exists(trial.error_file):
            with open(trial.error_file) as f:
                lines = [ln for ln in f.read().strip().splitlines() if ln.strip()]
            message = lines[-1][:500] if lines else message
        self._finish(trial, result, error=message)

    def record_interrupted(self) -> None:
        """Record the trials still running when the search was interrupted, with what they
        had reported so far."""
        for trial_id, trial in list(self.running.items()):
            self._finish(trial, self.last.get(trial_id, {}), error=None, interrupted=True)

    def _finish(
        self, trial: Any, result: dict[str, Any], error: str | None, interrupted: bool = False
    ) -> None:
        self.running.pop(trial.trial_id, None)
        number = self._number(trial)
        c = self.config
        status = result.get("status", objective.ERROR)
        if interrupted:
            status = objective.INTERRUPTED
            error = "the search was interrupted while this trial ran"
        elif error is not None:
            status = objective.ERROR
        elif not result.get("final"):
            status = objective.STOPPED  # ended by the early-stopping scheduler
        record = {
            "trial": number,
            "trial_id": trial.trial_id,
            **self._roles(trial),
            "recipe": self._recipe(trial),
            "params": _search_params(trial.config),
            "status": status,
            "score": objective.score(status, result.get("tta_seconds"), result.get("best_metric"),
                                     c.target, c.max_train_seconds),
            "message": error or _stopped_message(status, result) or result.get("message", ""),
            "node_ip": result.get("node_ip"),
            "node_id": result.get("node_id"),
            "hostname": result.get("hostname"),
            "started_at": self.started.pop(trial.trial_id, None),
            "finished_at": time.time(),
        }
        for key in ("tta_seconds", "best_metric", "last_metric", "train_seconds", "eval_seconds",
                    "setup_seconds", "steps", "examples", "peak_memory_bytes",
                    "peak_memory_source", "peak_reserved_bytes", "peak_rss_bytes", "device",
                    "predicted_peak_bytes", "prediction_error", "tracked_peak_bytes",
                    "memory_breakdown", "memory_cap_fraction", "worker_nodes", "curve"):
            record[key] = result.get(key)
        if status != objective.REACHED:
            record["tta_seconds"] = None
        prediction = self.predictions.get(_key(trial.config))
        if prediction is not None:
            record["prediction"] = prediction
            record["predicted_peak_bytes"] = record.get("predicted_peak_bytes") or \
                prediction.get("peak_bytes")
        record["launched"] = True
        self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        _check_finite(record)
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.on_event:
            self.on_event("finished", record)


def _stopped_message(status: str, result: dict[str, Any]) -> str:
    if status != objective.STOPPED:
        return ""
    best = result.get("best_metric")
    seconds = result.get("train_seconds") or 0.0
    shown = f"{best:.4f}" if isinstance(best, (int, float)) else "-"
    return (f"stopped early at {seconds:.1f}s of training (metric {shown}): behind other trials "
            "at the same training time, or already slower than the best time-to-accuracy")


def _check_finite(record: dict[str, Any]) -> None:
    for key, value in list(record.items()):
        if isinstance(value, float) and not math.isfinite(value):
            record[key] = None


def read_records(results_dir: Path) -> list[dict[str, Any]]:
    """Every trial record written so far (``trials.jsonl``), in the order trials ended."""
    path = Path(results_dir) / TRIALS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_ray_available() -> None:
    """Raise ``UserError`` naming the install command when Ray Tune or Optuna is missing."""
    missing = []
    for module in ("ray.tune", "optuna"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(
            f"the search needs {', '.join(missing)}, which is not installed; run: "
            "pip install 'ray[tune]' optuna (or make setup)"
        )
