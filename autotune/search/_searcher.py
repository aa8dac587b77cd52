"""The searcher: Optuna proposes recipes through its public ask/tell API, stored in the run
directory; a memory gate refuses what would not fit; a deadline ends the proposals.

``StudySearcher`` is a Ray Tune ``Searcher`` (Tune's public interface for a search algorithm)
over an Optuna study kept in ``study.journal`` (``JournalStorage``, which ``optuna.load_study``
and optuna-dashboard open). Each proposal is ``study.ask()`` with the space's define-by-run
``suggest``; fixed points (the baseline, the warm start, interrupted trials of a resumed
search) are ``enqueue_trial``-ed first. When Tune reports a trial's end, the study is told its
score, with the recipe, state and measurements as user attributes.

The memory gate (``MemoryGate``): a proposal whose predicted peak per device does not fit the
budget is told to the study as infeasible at once (with its prediction), recorded through
``on_refused``, and never launched; the next proposal is asked for. So is a recipe whose
workers the cluster cannot hold at all (``placement``: ``autotune.search._ray.placement_problem``),
which Ray would otherwise queue for ever; the reason is its record's message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search import Searcher

from autotune import objective
from autotune.errors import ConfigError
from autotune.knobs import unsupported_reason
from autotune.memory import check_budget
from autotune.recipe import Recipe
from autotune.results import ended_score, ended_status
from autotune.search._ray import raise_if_interrupted
from autotune.space import SearchSpace
from autotune.tasks import Task

STUDY_NAME = "autotune"
MAX_REFUSED_IN_A_ROW = 200
"""Proposals refused by the gate in a row before the search stops asking (the space hardly
fits the budget)."""
STARTUP_TRIALS = 5
"""Random proposals before TPE models the results (Optuna's default is 10)."""
USER_ATTRS = ("status", "tta_seconds", "best_metric", "train_seconds", "peak_memory_bytes",
              "predicted_peak_bytes", "message")


def open_study(path: Path, sampler: str, seed: int) -> optuna.Study:
    """The search's study in ``path`` (created, or loaded to resume). The sampler is seeded
    with ``seed`` plus the trials already in the study, so a resumed search draws a new
    stream instead of re-proposing the same points."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(path)))
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    done = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials) \
        if STUDY_NAME in names else 0
    chosen = optuna.samplers.RandomSampler(seed=seed + done) if sampler == "random" else \
        optuna.samplers.TPESampler(seed=seed + done, n_startup_trials=STARTUP_TRIALS)
    return optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="minimize",
                               sampler=chosen, load_if_exists=True)


def fail_interrupted(study: optuna.Study) -> list[dict[str, Any]]:
    """Mark the trials an interrupted run left running as failed; returns their points, to
    be run again."""
    points = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        points.append(dict(trial.params))
    return points


class MemoryGate:
    """Whether a recipe's predicted peak per device fits the budget
    (``autotune.memory.check_budget``, traced once per model and micro-batch)."""

    def __init__(self, task: Task, budget_bytes: int, device_type: str) -> None:
        self.task = task
        self.budget_bytes = budget_bytes
        self.device_type = device_type

    def check(self, recipe: Recipe) -> tuple[bool, dict[str, Any] | None]:
        """``(fits, prediction)``; a recipe the device cannot run, or whose prediction fails,
        is let through (the trial itself reports why)."""
        if unsupported_reason(recipe, self.device_type):
            return True, None
        try:
            fits, prediction = check_budget(self.task, recipe, self.budget_bytes,
                                            self.device_type)
        except Exception as exc:  # noqa: BLE001 - a failed prediction must not stop a search
            return True, {"error": f"{type(exc).__name__}: {exc}"[:300]}
        return fits, prediction.to_dict()


RefusedFn = Callable[[dict[str, Any], Recipe, dict[str, Any], int, str | None], None]
"""``(params, recipe, prediction, study_trial, reason)`` of a refused proposal: reason None for
the memory gate (the prediction says why), else why the cluster cannot place it."""
PlacementFn = Callable[[Recipe], str | None]
"""Why the cluster can never hold a recipe's trial, or None when it can."""


class StudySearcher(Searcher):
    """Optuna's proposals for Ray Tune (see the module docstring)."""

    def __init__(self, study: optuna.Study, space: SearchSpace,
                 recipe_of: Callable[[dict[str, Any]], Recipe], *, proposals: int,
                 points: list[dict[str, Any]] | None = None, gate: MemoryGate | None = None,
                 placement: PlacementFn | None = None,
                 on_refused: RefusedFn | None = None, deadline: float | None = None,
                 target: float, max_train_seconds: float,
                 higher_is_better: bool = True, first_regardless: bool = False) -> None:
        super().__init__(metric="score", mode="min")
        self.study = study
        self.space = space
        self.recipe_of = recipe_of
        self.left = proposals
        """Proposals still to make, refused ones included."""
        self.points = list(points or [])
        self.gate = gate
        self.placement = placement
        self.on_refused = on_refused
        self.deadline = deadline
        self.first_regardless = first_regardless
        """Propose the first point even past the deadline: the baseline, which every search
        measures (each speedup is against it), however small its time budget."""
        self.target = target
        self.max_train_seconds = max_train_seconds
        self.higher_is_better = higher_is_better
        self.live: dict[str, optuna.trial.Trial] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        raise_if_interrupted()
        for _ in range(MAX_REFUSED_IN_A_ROW):
            late = self.deadline is not None and time.time() > self.deadline
            if self.left <= 0 or (late and not self.first_regardless):
                return Searcher.FINISHED
            self.first_regardless = False
            self.left -= 1
            trial, params = self._ask()
            try:
                recipe = self.recipe_of(params)
            except ConfigError as exc:
                trial.set_user_attr("message", "invalid recipe: " + "; ".join(exc.problems))
                self.live[trial_id] = trial
                return {**params, "_study_trial": trial.number}
            trial.set_user_attr("recipe", recipe.to_dict())
            unplaceable = self.placement(recipe) if self.placement else None
            fits, prediction = self.gate.check(recipe) if self.gate and not unplaceable \
                else (unplaceable is None, None)
            if fits:
                self.live[trial_id] = trial
                extra = {"_prediction": prediction} if prediction else {}
                return {**params, "_study_trial": trial.number, **extra}
            self._refuse(trial, params, recipe, prediction or {}, unplaceable)
        return Searcher.FINISHED

    def _ask(self) -> tuple[optuna.trial.Trial, dict[str, Any]]:
        if self.points:
            self.study.enqueue_trial(self.points.pop(0), skip_if_exists=False)
        trial = self.study.ask()
        return trial, self.space.suggest(trial)

    def _refuse(self, trial: optuna.trial.Trial, params: dict[str, Any], recipe: Recipe,
                prediction: dict[str, Any], reason: str | None = None) -> None:
        score = objective.score(objective.INFEASIBLE, None, None, self.target,
                                self.max_train_seconds)
        trial.set_user_attr("status", objective.INFEASIBLE)
        trial.set_user_attr("launched", False)
        trial.set_user_attr("predicted_peak_bytes", prediction.get("peak_bytes"))
        if reason:
            trial.set_user_attr("message", reason[:300])
        self.study.tell(trial, score)
        if self.on_refused is not None:
            self.on_refused(params, recipe, prediction, trial.number, reason)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        trial = self.live.pop(trial_id, None)
        if trial is None:
            return
        status = ended_status(result, error)
        for key in USER_ATTRS:
            value = status if key == "status" else (result or {}).get(key)
            if value is not None:
                trial.set_user_attr(key, value if not isinstance(value, str) else value[:300])
        self.study.tell(trial, ended_score(status, result, self.target, self.max_train_seconds,
                                          self.higher_is_better))
