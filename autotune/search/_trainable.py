"""The trial side of the search: what runs in a Ray Tune trial process.

A trial gets a point (the sampled parameters plus private keys the driver adds: ``_seed``,
``_rerun_of``, ``_max_train_seconds`` for confirmation runs, ``_prediction`` from the memory
gate, ``_study_trial``), builds the recipe, and calls ``autotune.train.run_trial``, the same
function ``autotune train`` and the tests call. Progress goes to Tune through ``tune.report``,
throttled (each report costs time).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import ray
from ray import tune

from autotune import objective
from autotune.errors import ConfigError
from autotune.integrations import load_any_task
from autotune.recipe import Recipe
from autotune.search._workers import RayLauncher, held_gpus
from autotune.search.provenance import trial_provenance
from autotune.space import SearchSpace
from autotune.tasks import Task
from autotune.train import TrialLimits, pick_device, run_trial


def unwrap(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's point: a confirmation run's config is ``{"_point": point}`` (a grid)."""
    return dict(config.get("_point", config))


def search_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's point without the driver's private keys (``_seed``, ...)."""
    return {k: v for k, v in unwrap(config).items() if not k.startswith("_")}


def recipe_for(params: dict[str, Any], space: SearchSpace, baseline: Recipe,
               workers_per_trial: int) -> Recipe:
    """The recipe of a sampled point; parallel modes get ``workers_per_trial`` workers unless
    the space samples ``workers``."""
    values = space.knob_values(params)  # a restricted space's ``system`` expanded
    if values.get("parallelism", baseline.parallelism) != "single" and "workers" not in values:
        values["workers"] = workers_per_trial
    return baseline.replace(**values)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial process needs besides its point (sent once through Ray's object
    store)."""

    model: str
    task_options: dict[str, Any]
    space: SearchSpace
    baseline: Recipe
    target: float
    max_train_seconds: float
    budget_bytes: int | None
    seed: int
    device: str | None
    """``cpu`` or ``cuda`` as asked for (None: a GPU where the trial holds one). ``cpu`` trains
    on the CPU whatever the trial holds (``autotune.search._ray.simulating_gpus``)."""
    report_interval_s: float
    workers_per_trial: int

    def recipe(self, config: dict[str, Any]) -> Recipe:
        return recipe_for(search_params(config), self.space, self.baseline,
                          self.workers_per_trial)


def trainable(config: dict[str, Any], setup: TrialSetup) -> None:
    """One Ray Tune trial: build the recipe from the point and run it for real."""
    point = unwrap(config)
    seed = int(point.get("_seed", setup.seed))
    max_train = float(point.get("_max_train_seconds", setup.max_train_seconds))
    predicted = (point.get("_prediction") or {}).get("peak_bytes")
    try:
        recipe = setup.recipe(config)
    except ConfigError as exc:
        tune.report({"status": objective.ERROR, "final": True,
                     "message": "invalid recipe: " + "; ".join(exc.problems)})
        return
    device = pick_device(setup.device)
    task = task_for(setup.model, device.type, setup.task_options)
    limits = TrialLimits(
        max_train_seconds=max_train, eval_every_seconds=task.eval_every_seconds,
        target=setup.target, higher_is_better=task.higher_is_better,
        budget_bytes=setup.budget_bytes, seed=seed, predicted_peak_bytes=predicted,
        # No budget, nothing to check a CPU's costly memory measurement against: skipped.
        track_memory=setup.budget_bytes is not None,
    )
    reporter = ThrottledReport(setup.report_interval_s)
    node = ray.get_runtime_context().get_node_id()
    reporter.extra.update(node_id=node, worker_nodes=[node], worker_gpus=[held_gpus()],
                          node_ip=ray.util.get_node_ip_address(),
                          provenance=dict(trial_provenance(device.type)))
    launcher = RayLauncher(
        on_placed=lambda nodes: reporter.extra.update(
            worker_nodes=[n["node_id"] for n in nodes], worker_gpus=[n["gpus"] for n in nodes]),
        device=setup.device,
    )
    run_trial(task, recipe, limits, report=reporter, device=str(device), launch=launcher)


_TASKS: dict[str, Task] = {}


def task_for(model: str, device_type: str, options: dict[str, Any]) -> Task:
    """The task, built once per process (Tune reuses a trial process for later trials): its
    data is read and tokenized once, not per trial. Every trial builds its own model. A
    Trainer factory or training function (``autotune.integrations``, named by the options)
    is built without its probe: the driver checked it."""
    key = json.dumps([model, device_type, options], sort_keys=True, default=str)
    if key not in _TASKS:
        _TASKS.clear()
        _TASKS[key] = load_any_task(model, device_type, options)
    return _TASKS[key]


class ThrottledReport:
    """Forwards a trial's progress to Ray Tune at most every ``interval`` seconds (a
    ``tune.report`` costs about 1.7 s of the trial's wall time), and always the final result.

    Every report carries the learning curve so far (a few hundred (seconds, metric) pairs at
    most, small next to the cost of the call): a trial the scheduler stops is recorded from its
    last intermediate report, and keeps its curve that way."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last = 0.0
        self.extra: dict[str, Any] = {}
        """Sent with every report: the trial's node and its workers' nodes."""

    def __call__(self, progress: dict[str, Any]) -> None:
        now = time.time()
        if not progress.get("final") and now - self.last < self.interval:
            return
        self.last = now
        metrics = {k: v for k, v in progress.items() if v is not None}
        metrics.update(self.extra)
        tune.report(metrics)
