"""The search: Ray Tune runs trials, Optuna proposes recipes, ASHA stops clearly losing trials.

This is the only module that imports Ray Tune and Optuna. It emits events (trial started,
trial finished) to a callback that the CLI turns into progress lines, and writes every finished
trial to the results directory as soon as it ends.
"""

from __future__ import annotations

import json
import math
import os
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
    """Ray cluster to connect to; None starts a local Ray instance."""
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
    ``results_dir/trials.jsonl`` as it ends, so nothing measured is lost if the search stops."""
    import ray
    from ray import tune

    config.results_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    own_ray = _init_ray(config)
    try:
        points = warm_start_points(config)
        searcher = _make_searcher(config, points, start)
        scheduler = _make_scheduler(config)
        recorder = _Recorder(config, on_event, warm_start=len(points))
        base = _trial_resources(config)
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, setup=_TrialSetup.from_config(config)),
            lambda params: _resources_for(base, params, config),
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=config.trials,
                max_concurrent_trials=_max_concurrent(config),
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str((config.results_dir / "ray").resolve()),
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
        if own_ray:
            ray.shutdown()
    return SearchOutcome(
        records=recorder.records,
        wall_seconds=time.time() - start,
        ray_dir=str(config.results_dir / "ray"),
    )


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
    if config.address:
        ray.init(address=config.address, log_to_driver=False)
        return True
    # Trial processes import user tasks (package.module:function) the way the driver does:
    # from the directory the command runs in.
    paths = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
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
    """One trial per GPU where there are GPUs; on a CPU-only machine one trial takes every
    CPU, so trials run one at a time and their timings are not distorted by each other."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    if gpus and config.device != "cpu":
        return {"cpu": max(1, cpus // gpus), "gpu": 1}
    nodes = max(1, len([n for n in ray.nodes() if n.get("Alive")]))
    return {"cpu": max(1, cpus // nodes)}


def _resources_for(base: dict[str, float], params: dict[str, Any],
                   config: SearchConfig) -> Any:
    """A single-worker trial holds ``base``; a multi-worker trial holds a placement group with
    a bundle per worker that Ray places (``autotune.search._workers``): a GPU each on GPU
    machines, a share of ``base``'s CPUs each on CPUs."""
    from autotune.search._workers import placement

    try:
        workers = recipe_for(params, config.space, config.baseline,
                             config.workers_per_trial).workers
    except ConfigError:
        return base  # the trial reports the invalid recipe at once
    if workers <= 1:
        return base
    return placement(workers, base["cpu"], bool(base.get("gpu")), config.placement_strategy)


def _max_concurrent(config: SearchConfig) -> int:
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus and config.device != "cpu":
        return gpus
    return max(1, len([n for n in ray.nodes() if n.get("Alive")]))


def warm_start_points(config: SearchConfig) -> list[dict[str, Any]]:
    """The baseline's point first, then each suggested recipe's that lies in the space."""
    points = [config.space.point_for(config.baseline)]
    for recipe in config.suggestions:
        try:
            point = config.space.point_for(recipe)
        except ConfigError:
            continue
        if point not in points:
            points.append(point)
    return points[: config.trials]


def _make_searcher(config: SearchConfig, points: list[dict[str, Any]], start: float) -> Any:
    import optuna
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    deadline = None if config.time_budget_s is None else start + config.time_budget_s

    class _DeadlineOptunaSearch(OptunaSearch):
        """Optuna's proposals until the search's time budget is spent; then no new trials."""

        def suggest(self, trial_id: str) -> dict | None:
            if deadline is not None and time.time() > deadline:
                return Searcher.FINISHED
            return super().suggest(trial_id)

    space = config.space
    return _DeadlineOptunaSearch(
        space=space.suggest,
        metric="score",
        mode="min",
        points_to_evaluate=points,
        sampler=optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=5),
    )


def _make_scheduler(config: SearchConfig) -> Any:
    """ASHA on accuracy at equal training time, plus time-aware stopping (see
    ``TimeAwareASHA``)."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

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
            self.best_tta: float | None = None

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
    from ray import tune

    from autotune.search._workers import RayLauncher
    from autotune.tasks import load_task
    from autotune.train import TrialLimits, pick_device, run_trial

    try:
        recipe = recipe_for(params, setup.space, setup.baseline, setup.workers_per_trial)
    except ConfigError as exc:
        tune.report(_invalid_result(exc, params, setup))
        return
    device = pick_device(setup.device)
    task = load_task(setup.model, device.type, setup.task_options)
    limits = TrialLimits(
        max_train_seconds=setup.max_train_seconds,
        eval_every_seconds=task.eval_every_seconds,
        target=setup.target,
        budget_bytes=setup.budget_bytes,
        seed=setup.seed,
    )
    reporter = _ThrottledReport(setup.report_interval_s, recipe)
    reporter.extra["worker_nodes"] = [_where()]
    launcher = RayLauncher(
        on_placed=lambda nodes: reporter.extra.update(worker_nodes=[n["node_ip"] for n in nodes])
    )
    run_trial(task, recipe, limits, report=reporter, device=str(device), launch=launcher)


def _where() -> str:
    import ray

    return ray.util.get_node_ip_address()


class _ThrottledReport:
    """Forwards a trial's progress to Ray Tune at most every ``interval`` seconds (each report
    costs time), and always the final result."""

    def __init__(self, interval: float, recipe: Recipe) -> None:
        self.interval = interval
        self.recipe = recipe.to_dict()
        self.last = 0.0
        self.extra: dict[str, Any] = {}
        """Sent with every report (where the trial's workers run)."""

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

    def __init__(self, config: SearchConfig, on_event: EventFn | None, warm_start: int = 1) -> None:
        self.config = config
        self.warm_start = warm_start
        self.on_event = on_event
        self.records: list[dict[str, Any]] = []
        self.numbers: dict[str, int] = {}
        self.last: dict[str, dict[str, Any]] = {}
        self.running: dict[str, Any] = {}
        self.path = config.results_dir / TRIALS_FILE

    def _number(self, trial: Any) -> int:
        if trial.trial_id not in self.numbers:
            self.numbers[trial.trial_id] = len(self.numbers) + 1
        return self.numbers[trial.trial_id]

    def _recipe(self, trial: Any) -> dict[str, Any] | None:
        try:
            c = self.config
            return recipe_for(trial.config, c.space, c.baseline, c.workers_per_trial).to_dict()
        except (ConfigError, TypeError):
            return None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running[trial.trial_id] = trial
        number = self._number(trial)
        record = {"trial": number, "trial_id": trial.trial_id, "recipe": self._recipe(trial),
                  "params": dict(trial.config), "is_baseline": number == 1,
                  "warm_start": 1 < number <= self.warm_start}
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
            "is_baseline": number == 1,
            "warm_start": 1 < number <= self.warm_start,
            "recipe": self._recipe(trial),
            "params": dict(trial.config),
            "status": status,
            "score": objective.score(status, result.get("tta_seconds"), result.get("best_metric"),
                                     c.target, c.max_train_seconds),
            "message": error or _stopped_message(status, result) or result.get("message", ""),
            "node_ip": result.get("node_ip"),
            "hostname": result.get("hostname"),
            "finished_at": time.time(),
        }
        for key in ("tta_seconds", "best_metric", "last_metric", "train_seconds", "eval_seconds",
                    "setup_seconds", "steps", "examples", "peak_memory_bytes",
                    "peak_memory_source", "peak_reserved_bytes", "peak_rss_bytes", "device",
                    "worker_nodes", "curve"):
            record[key] = result.get(key)
        if status != objective.REACHED:
            record["tta_seconds"] = None
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
