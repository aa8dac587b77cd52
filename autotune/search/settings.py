"""The settings of one search: a typed request, its defaults (the one source; the CLI's flags
show these), and every problem in it reported at once.

``SearchRequest`` is what a user, the CLI or a benchmark asks for, in plain values; it is saved
in the run directory (``settings.json``) so that ``--resume`` continues with the same settings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from autotune.errors import ConfigError
from autotune.integrations import INTEGRATION_KEY, INTEGRATIONS
from autotune.recipe import Recipe
from autotune.search.tracking import logger_problems

DEFAULT_MODEL = "bert"
DEFAULT_TRIALS = 20
"""Trials at most, the baseline included."""
DEFAULT_TIME_BUDGET_S = 480.0
"""The whole search ends within 8 minutes (``autotune.search._run`` splits it in phases)."""
DEFAULT_CONFIRM_TOP = 3
DEFAULT_CONFIRM_SEEDS = 2
CONFIRM_SHARE = 0.25
"""Share of the time budget kept for the confirmation runs."""
SCREEN_SHARE = 0.15
"""Share of the time budget that screening the system configurations may take, at most
(``autotune.search.screening``); the convergence trials begin when it is done."""
RESUMABLE = ("trials", "time_budget_s", "address", "cpus_per_trial", "gpus_per_trial",
             "max_concurrent_trials", "storage", "loggers", "mlflow_uri", "verbose")
"""Settings that may be given again with ``resume`` to change them; the rest are the search's."""
PLACEMENTS = ("pack", "spread")
SAMPLERS = ("tpe", "random")
SCHEDULERS = ("asha", "fifo")


@dataclass(frozen=True)
class SearchRequest:
    """Everything a search may be asked; every field has a default."""

    model: str = DEFAULT_MODEL
    """Task: a built-in (``bert``, ``mnist``) or ``package.module:function``; with
    ``integration`` ``trainer`` or ``function``, the Trainer factory or training function
    (``package.module:function``)."""
    integration: str = "task"
    """What ``model`` names: ``task`` (returns an ``autotune.tasks.Task``), ``trainer`` (takes
    ``TrainingArguments``, returns a Hugging Face ``Trainer``: ``--trainer``) or ``function``
    (``fn(recipe, ctx)``: ``--function``); ``autotune.integrations``."""
    metric: str | None = None
    """The metric a Trainer's evaluation or a training function reports (``eval_accuracy``);
    only with ``integration`` trainer or function, where it is required."""
    direction: str | None = None
    """``max`` (higher is better) or ``min`` for ``metric``; None: guessed from its name
    (``loss``, ``perplexity``, ``error``... are lower-is-better)."""
    eval_every_s: float | None = None
    """Training seconds between two evaluations of a Trainer or function (the resolution of
    time-to-target); None: 2 s for a Trainer, 1 s for a function."""
    task_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the task's factory."""
    budget_bytes: int | None = None
    """Peak memory one device may use; None: no limit."""
    space: str | None = None
    """Search-space YAML; None: the space shipped for ``model``."""
    target: float | None = None
    """Metric value to reach; None: the task's own target."""
    seed: int = 0
    """Seeds the sampler and every trial's weights and data order."""
    device: str | None = None
    """``cpu`` or ``cuda``; None: a GPU where there is one."""
    trials: int = DEFAULT_TRIALS
    time_budget_s: float | None = DEFAULT_TIME_BUDGET_S
    """Seconds the whole search may take, start-up to results (trials still running at a
    phase's end are stopped; confirmation runs that would not fit are cut); None: no limit."""
    max_trial_seconds: float | None = None
    """Training-time limit of one trial; None: the task's."""
    results_dir: str | None = None
    """None: ``autotune_runs/<model>-<date>-<time>``."""
    output: str | None = None
    """Where the best recipe goes; None: ``<results_dir>/best_recipe.yaml``."""
    address: str | None = None
    """Ray cluster (``host:port``, ``auto``); None: ``RAY_ADDRESS`` if set, else a local Ray."""
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent_trials: int | None = None
    storage: str | None = None
    """Ray Tune's storage path; None: ``<results_dir>/ray``."""
    placement: str = "pack"
    """``pack`` or ``spread`` the workers of a multi-worker trial."""
    workers_per_trial: int | None = None
    """Workers of a parallel recipe; None: the GPUs here (on a CPU, 2 if the space has
    parallel modes)."""
    confirm_top: int = DEFAULT_CONFIRM_TOP
    """The fastest N recipes (and the baseline) run again with ``confirm_seeds`` more seeds."""
    confirm_seeds: int = DEFAULT_CONFIRM_SEEDS
    resume: str | None = None
    """Results directory of a search to continue."""
    baseline: dict[str, Any] | None = None
    """The baseline recipe (``Recipe.to_dict()``); None: the task's."""
    sampler: str = "tpe"
    scheduler: str = "asha"
    screen: bool | None = None
    """Screen the space's system configurations (timed steps, no convergence) first and run
    the convergence trials on the fast ones only (``autotune.search.screening``); None: when
    the space has at least two system configurations."""
    warm_start: bool = True
    """Try the general warm-start rules (``autotune.warm_start``) right after the baseline."""
    task_warm_start: bool = False
    """Also try the recipes the task itself suggests (``Task.suggested_recipes``), right after
    the baseline: off by default, so that what a search reports is what it found."""
    report_interval_s: float = 5.0
    """Least wall time between two progress reports of a trial (each costs time)."""
    grace_period_s: float | None = None
    """Training seconds before the scheduler may stop a trial; None: a sixth of the limit."""
    time_margin: float = 1.5
    """A trial still short of the target after this many times the best time-to-target so far
    is stopped: it can no longer win."""
    loggers: list[str] = field(default_factory=list)
    """Trackers that get every trial and the search's results: ``tensorboard``, ``csv``,
    ``mlflow`` (``autotune.search.tracking``)."""
    mlflow_uri: str | None = None
    """The MLflow tracking URI of the ``mlflow`` logger; None: a SQLite store in the run
    directory."""
    verbose: bool = False
    """Let Ray's and Optuna's own log lines through (they are kept to errors otherwise)."""

    def problems(self) -> list[str]:
        """Every problem in the request, one line each (empty when it is valid)."""
        out = []

        def positive(name: str, value: float | None, allow_zero: bool = False) -> None:
            if value is None:
                return
            bad = value < 0 if allow_zero else value <= 0
            if bad or (isinstance(value, float) and not math.isfinite(value)):
                out.append(f"{_flag(name)} must be {'>= 0' if allow_zero else '> 0'}, "
                           f"got {value}")

        if self.trials < 1:
            out.append(f"--trials must be >= 1, got {self.trials}")
        for name in ("budget_bytes", "time_budget_s", "max_trial_seconds", "cpus_per_trial",
                     "max_concurrent_trials", "target"):
            positive(name, getattr(self, name))
        positive("gpus_per_trial", self.gpus_per_trial, allow_zero=True)
        for name in ("confirm_top", "confirm_seeds"):
            positive(name, getattr(self, name), allow_zero=True)
        if self.workers_per_trial is not None and self.workers_per_trial < 1:
            out.append(f"--workers-per-trial must be >= 1, got {self.workers_per_trial}")
        for name, allowed in (("placement", PLACEMENTS), ("sampler", SAMPLERS),
                              ("scheduler", SCHEDULERS), ("device", ("cpu", "cuda", None))):
            if getattr(self, name) not in allowed:
                out.append(f"{_flag(name)} must be one of {', '.join(map(str, allowed))}, got "
                           f"{getattr(self, name)!r}")
        out += logger_problems(self.loggers, self.mlflow_uri)
        out += self._integration_problems()
        if self.baseline is not None:
            try:
                Recipe.from_dict(self.baseline, source="baseline")
            except ConfigError as exc:
                out += exc.problems
        return out

    def _integration_problems(self) -> list[str]:
        """What ``--trainer``/``--function`` need: a metric and a target, a known direction;
        and what only they take."""
        out = []
        if self.integration not in INTEGRATIONS:
            return [f"integration must be one of {', '.join(INTEGRATIONS)}, got "
                    f"{self.integration!r}"]
        positive_eval = self.eval_every_s is None or (
            math.isfinite(self.eval_every_s) and self.eval_every_s > 0)
        if not positive_eval:
            out.append(f"--eval-every must be > 0 seconds, got {self.eval_every_s}")
        if self.integration == "task":
            given = [f for f, v in (("--metric", self.metric), ("--direction", self.direction),
                                    ("--eval-every", self.eval_every_s)) if v is not None]
            if given:
                out.append(f"{', '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to "
                           "--trainer and --function; a task (--model) names its own metric, "
                           "direction and evaluation interval")
            return out
        flag = f"--{self.integration}"
        if not self.metric:
            out.append(f"{flag} needs --metric: the name of the metric to reach (e.g. "
                       "eval_accuracy, as the Trainer's evaluation reports it)")
        if self.target is None:
            out.append(f"{flag} needs --target: the value of --metric to reach")
        if self.direction not in (None, "max", "min"):
            out.append(f"--direction must be max (higher is better) or min (lower is "
                       f"better), got {self.direction!r}")
        return out

    def integration_options(self) -> dict[str, Any]:
        """The task options a search's driver and trials build the task with: ``task_options``,
        and for a Trainer or function the integration's own (``autotune.integrations``)."""
        if self.integration == "task":
            return dict(self.task_options)
        options = {**self.task_options, INTEGRATION_KEY: self.integration,
                   "metric": self.metric, "target": self.target, "direction": self.direction}
        if self.max_trial_seconds is not None:
            options["max_train_seconds"] = self.max_trial_seconds
        if self.eval_every_s is not None:
            options["eval_every_seconds"] = self.eval_every_s
        return options

    def check(self) -> None:
        """Raise one ``ConfigError`` listing every problem."""
        problems = self.problems()
        if problems:
            raise ConfigError("search settings", problems)

    def replace(self, **changes: Any) -> SearchRequest:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchRequest:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def resumed(self, saved: dict[str, Any], given: dict[str, Any]) -> SearchRequest:
        """The saved request of the search to continue, with the resumable settings that this
        request gives (``given``: name -> value) changed."""
        old = SearchRequest.from_json(saved)
        changes = {k: v for k, v in given.items() if k in RESUMABLE}
        return old.replace(**changes, resume=self.resume)


_FLAGS = {"budget_bytes": "--budget", "time_budget_s": "--time-budget",
          "eval_every_s": "--eval-every",
          "max_trial_seconds": "--max-trial-time", "confirm_top": "--confirm"}


def _flag(name: str) -> str:
    """The CLI flag of a setting, for messages (the Python name is in brackets)."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))
