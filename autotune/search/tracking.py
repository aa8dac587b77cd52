"""Tracking: a search's trials and results in the tools people already use (``--logger``).

``tensorboard``, ``csv`` and ``mlflow``. Per trial: its recipe as parameters, its learning curve
as metrics (the metric at each evaluation, at step = training milliseconds), and its outcome
(time-to-target, best metric, score, peak memory, state). Per search: the best recipe, and
``report.html``, ``best_recipe.yaml`` and ``search.yaml`` as artefacts (mlflow: on a parent run
whose children are the trials).

Each trial is written from its record as the trial ends (``Recorder.on_record``), not from Ray
Tune's logger callbacks: those log ``trial.config`` (the sampled point with autotune's private
keys, not the complete recipe) and only the results a trial reports, at most one every
``report_interval_s`` (a report costs the trial ~1.7 s), so they would miss most of the curve;
a record has the recipe and every evaluation. What each library offers is used as it is:
``torch.utils.tensorboard.SummaryWriter`` (scalars and hparams), ``csv``, ``mlflow.MlflowClient``
(runs nested by the ``mlflow.parentRunId`` tag, ``log_batch``, ``log_artifact``).

A logger that fails while the search runs is reported as a warning and switched off: tracking
never costs a search its results. Where the files go (under the run directory):

- ``logs/tensorboard/trial-NNN/`` (``tensorboard --logdir RUN_DIR/logs/tensorboard``), and
  ``logs/tensorboard/search/`` (the best recipe as text, its time-to-target and speedup);
- ``logs/csv/curves.csv`` (trial, seed, state, training seconds, metric: one row per
  evaluation), ``logs/csv/recipes.csv`` (one row per trial: outcome and ``recipe.<knob>``),
  ``logs/csv/best.csv`` (the winner, and where report.html and best_recipe.yaml are);
- mlflow: ``--mlflow-uri``, else ``sqlite:///RUN_DIR/logs/mlflow/mlflow.db`` with artefacts in
  ``logs/mlflow/artifacts`` (MLflow 3 refuses its old file store), experiment ``autotune``.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from autotune import objective
from autotune.errors import UserError
from autotune.recipe import Recipe
from autotune.results import TrialRecord

EventFn = Callable[[str, Any], None]
LOGS_DIR = "logs"
MLFLOW_EXPERIMENT = "autotune"


@dataclass(frozen=True)
class LoggerKind:
    """One ``--logger`` choice: the module it needs and the command that installs it."""

    name: str
    module: str | None
    install: str | None
    what: str


LOGGERS: dict[str, LoggerKind] = {
    "tensorboard": LoggerKind("tensorboard", "torch.utils.tensorboard",
                              "pip install 'autotune[tensorboard]'",
                              f"TensorBoard event files in RUN_DIR/{LOGS_DIR}/tensorboard"),
    "csv": LoggerKind("csv", None, None,
                      f"curves and recipes as CSV files in RUN_DIR/{LOGS_DIR}/csv"),
    "mlflow": LoggerKind("mlflow", "mlflow", "pip install 'autotune[mlflow]'",
                         "an MLflow run per trial under a run per search (--mlflow-uri, default "
                         f"a SQLite store in RUN_DIR/{LOGS_DIR}/mlflow)"),
}


def logger_problems(names: Sequence[str], mlflow_uri: str | None) -> list[str]:
    """Every problem with the ``--logger`` names and ``--mlflow-uri``, one line each."""
    out = [f"--logger must be one of {', '.join(sorted(LOGGERS))}, got {name!r}"
           for name in names if name not in LOGGERS]
    if mlflow_uri and "mlflow" not in names:
        out.append("--mlflow-uri is where --logger mlflow writes; add --logger mlflow")
    return out


def require_installed(names: Sequence[str]) -> None:
    """Raise ``UserError`` naming the install command of each chosen logger whose library is
    missing (before any trial runs)."""
    missing = []
    for name in dict.fromkeys(names):
        kind = LOGGERS.get(name)
        if kind is None or kind.module is None:
            continue
        try:
            __import__(kind.module)
        except ImportError as exc:
            missing.append(f"--logger {name} needs {kind.module.split('.')[-1]}, which is not "
                           f"installed ({exc}); run: {kind.install}")
    if missing:
        raise UserError("; ".join(missing))


class Sink(Protocol):
    """One logger: told each record as its trial ends, then the search's results."""

    def record(self, record: TrialRecord) -> None: ...

    def finish(self, results: SearchResults) -> None: ...

    def close(self, interrupted: bool) -> None: ...


@dataclass(frozen=True)
class SearchResults:
    """What a search leaves, for the loggers' per-search entry."""

    best: TrialRecord | None
    best_tta_seconds: float | None
    speedup: float | None
    artefacts: tuple[Path, ...]
    """``report.html``, ``best_recipe.yaml``, ``search.yaml``, ``trials.csv``: those written."""


@dataclass(frozen=True)
class TrackingContext:
    """What every logger needs to know about the search."""

    run_dir: Path
    metric: str
    model: str
    settings: dict[str, Any]
    """Search settings worth a parameter each (model, seed, budget, target, ...)."""
    mlflow_uri: str | None = None


class Tracker:
    """The chosen loggers of one run of a search (``open_tracker``)."""

    def __init__(self, sinks: dict[str, Sink], emit: EventFn) -> None:
        self.sinks = sinks
        self.emit = emit
        self.seconds = 0.0
        """Wall time spent in the loggers so far (what tracking costs the driver)."""

    def _each(self, what: str, call: Callable[[Sink], None]) -> None:
        start = time.perf_counter()
        for name, sink in list(self.sinks.items()):
            try:
                call(sink)
            except Exception as exc:  # noqa: BLE001 - tracking must not cost the search
                del self.sinks[name]
                self.emit("warning", f"--logger {name} failed ({what}: {type(exc).__name__}: "
                                     f"{exc}); it is off for the rest of this search")
        self.seconds += time.perf_counter() - start

    def on_record(self, record: TrialRecord) -> None:
        self._each(f"trial {record.trial}", lambda sink: sink.record(record))

    def finish(self, results: SearchResults) -> None:
        self._each("the search's results", lambda sink: sink.finish(results))
        self.close(interrupted=False)

    def close(self, interrupted: bool) -> None:
        self._each("closing", lambda sink: sink.close(interrupted))
        self.sinks.clear()


def open_tracker(names: Sequence[str], context: TrackingContext, emit: EventFn,
                 verbose: bool = False) -> Tracker:
    """The loggers ``names`` asks for, opened (``require_installed`` has checked them). A
    logger that cannot open is a warning, as one that fails later."""
    if not verbose:
        for noisy in ("mlflow", "alembic"):  # their INFO lines would break the status line
            logging.getLogger(noisy).setLevel(logging.WARNING)
    sinks: dict[str, Sink] = {}
    makers: dict[str, Callable[[TrackingContext], Sink]] = {
        "tensorboard": TensorBoardSink, "csv": CsvSink, "mlflow": MlflowSink}
    for name in dict.fromkeys(names):
        try:
            sinks[name] = makers[name](context)
        except Exception as exc:  # noqa: BLE001 - a logger must not cost the search
            emit("warning", f"--logger {name} could not start ({type(exc).__name__}: {exc}); "
                            "the search runs without it")
    return Tracker(sinks, emit)


# -- what a record holds, for every logger -------------------------------------------------------


def run_name(record: TrialRecord) -> str:
    """``trial-003``, or ``trial-005-rerun-of-002-seed-1`` for a confirmation run."""
    if record.rerun_of is not None:
        return f"trial-{record.trial:03d}-rerun-of-{record.rerun_of:03d}-seed-{record.seed}"
    return f"trial-{record.trial:03d}"


def recipe_params(record: TrialRecord) -> dict[str, Any]:
    """The recipe's knobs (every knob, not only those searched), plain scalars."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v)
            for k, v in (record.recipe or {}).items()}


def outcome_metrics(record: TrialRecord) -> dict[str, float]:
    """The trial's outcome as numbers (those it has)."""
    values = {"tta_seconds": record.tta_seconds, "best_metric": record.best_metric,
              "score": record.score, "train_seconds": record.train_seconds,
              "peak_memory_bytes": record.peak_memory_bytes, "steps": record.steps,
              "predicted_peak_bytes": record.predicted_peak_bytes}
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}


def curve_points(record: TrialRecord) -> list[tuple[int, float, float]]:
    """``(training milliseconds, training seconds, metric)`` at each evaluation."""
    return [(int(round(t * 1000)), float(t), float(m)) for t, m in (record.curve or [])]


# -- tensorboard ---------------------------------------------------------------------------------


class TensorBoardSink:
    """One TensorBoard run per trial (its curve as scalars, its recipe and outcome as hparams),
    one for the search."""

    def __init__(self, context: TrackingContext) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional: autotune[tensorboard]

        self.writer_cls = SummaryWriter
        self.context = context
        self.root = context.run_dir / LOGS_DIR / "tensorboard"
        self.root.mkdir(parents=True, exist_ok=True)

    def record(self, record: TrialRecord) -> None:
        metric = self.context.metric
        with self.writer_cls(log_dir=str(self.root / run_name(record))) as writer:
            start = record.started_at or record.finished_at or time.time()
            for step, seconds, value in curve_points(record):
                writer.add_scalar(metric, value, global_step=step, walltime=start + seconds)
            writer.add_text("recipe", _yaml_block(record.recipe))
            writer.add_text("status", f"{record.status}: {record.message}".strip(": "))
            params = recipe_params(record) or {"recipe": "invalid"}
            writer.add_hparams({**params, "status": record.status},
                               {f"outcome/{k}": v for k, v in outcome_metrics(record).items()},
                               run_name=".")

    def finish(self, results: SearchResults) -> None:
        with self.writer_cls(log_dir=str(self.root / "search")) as writer:
            if results.best is not None:
                writer.add_text("best_recipe", _yaml_block(results.best.recipe))
                writer.add_scalar("best/tta_seconds", results.best_tta_seconds or 0.0, 0)
            if results.speedup is not None:
                writer.add_scalar("best/speedup", results.speedup, 0)
            writer.add_text("files", "\n".join(f"- {p}" for p in results.artefacts))

    def close(self, interrupted: bool) -> None:
        return None


def _yaml_block(recipe: dict[str, Any] | None) -> str:
    if not recipe:
        return "(no valid recipe)"
    return "    " + Recipe.from_dict(recipe).to_yaml().replace("\n", "\n    ")


# -- csv -----------------------------------------------------------------------------------------


class CsvSink:
    """``curves.csv`` (one row per evaluation), ``recipes.csv`` (one row per trial),
    ``best.csv`` (one row: the winner); appended to on ``--resume``."""

    def __init__(self, context: TrackingContext) -> None:
        self.context = context
        self.root = context.run_dir / LOGS_DIR / "csv"
        self.root.mkdir(parents=True, exist_ok=True)
        self.knobs = list(Recipe().to_dict())

    def _append(self, name: str, header: list[str], rows: list[list[Any]]) -> None:
        path = self.root / name
        new = not path.exists()
        with open(path, "a", newline="") as f:
            out = csv.writer(f)
            if new:
                out.writerow(header)
            out.writerows(rows)

    def record(self, record: TrialRecord) -> None:
        ident = [record.trial, "" if record.rerun_of is None else record.rerun_of, record.seed,
                 record.status]
        self._append("curves.csv", ["trial", "rerun_of", "seed", "status", "train_seconds",
                                    self.context.metric],
                     [[*ident, seconds, value] for _, seconds, value in curve_points(record)])
        outcome = ["tta_seconds", "best_metric", "score", "train_seconds", "peak_memory_bytes"]
        recipe = record.recipe or {}
        self._append("recipes.csv", ["trial", "rerun_of", "seed", "status", *outcome,
                                     *(f"recipe.{k}" for k in self.knobs)],
                     [[*ident, *(_blank(getattr(record, k)) for k in outcome),
                       *(_blank(recipe.get(k)) for k in self.knobs)]])

    def finish(self, results: SearchResults) -> None:
        best = results.best
        recipe = (best.recipe if best else None) or {}
        files = {p.name: str(p) for p in results.artefacts}
        self._append("best.csv", ["trial", "tta_seconds", "speedup", "report_html",
                                  "best_recipe_yaml", *(f"recipe.{k}" for k in self.knobs)],
                     [[best.trial if best else "", _blank(results.best_tta_seconds),
                       _blank(results.speedup), files.get("report.html", ""),
                       next((v for k, v in files.items() if k.endswith(".yaml")
                             and k != "search.yaml"), ""),
                       *(_blank(recipe.get(k)) for k in self.knobs)]])

    def close(self, interrupted: bool) -> None:
        return None


def _blank(value: Any) -> Any:
    return "" if value is None else value


# -- mlflow --------------------------------------------------------------------------------------


class MlflowSink:
    """A parent run for the search (its settings as parameters, the best recipe and the files
    as artefacts at the end), a child run per trial."""

    def __init__(self, context: TrackingContext) -> None:
        from mlflow import MlflowClient  # optional: autotune[mlflow]; heavy to import

        self.context = context
        local = context.run_dir.resolve() / LOGS_DIR / "mlflow"
        if context.mlflow_uri:
            uri, artifacts = context.mlflow_uri, None
        else:
            local.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{local / 'mlflow.db'}", (local / "artifacts").as_uri()
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        self.experiment_id = experiment.experiment_id if experiment else \
            self.client.create_experiment(MLFLOW_EXPERIMENT, artifact_location=artifacts)
        parent = self.client.create_run(
            self.experiment_id, run_name=context.run_dir.name,
            tags={"autotune.run_dir": str(context.run_dir.resolve()),
                  "autotune.model": context.model, "autotune.kind": "search"})
        self.parent_id = parent.info.run_id
        self._log(self.parent_id, {k: v for k, v in context.settings.items() if v is not None},
                  {}, [])

    def _log(self, run_id: str, params: dict[str, Any], metrics: dict[str, float],
             series: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric, Param  # optional, as above

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, 0) for k, v in metrics.items()]
        batch += [Metric(k, v, stamp, step) for k, v, stamp, step in series]
        plain = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for at in range(0, len(plain), 100):  # log_batch's limits: 100 params, 1000 metrics
            self.client.log_batch(run_id, params=plain[at:at + 100])
        for at in range(0, len(batch), 1000):
            self.client.log_batch(run_id, metrics=batch[at:at + 1000])

    def record(self, record: TrialRecord) -> None:
        started = record.started_at or record.finished_at or time.time()
        tags = {"mlflow.parentRunId": self.parent_id, "autotune.status": record.status,
                "autotune.trial": str(record.trial), "autotune.seed": str(record.seed),
                "autotune.kind": "confirmation" if record.rerun_of is not None else "trial"}
        if record.is_baseline:
            tags["autotune.baseline"] = "true"
        if record.message:
            tags["autotune.message"] = record.message[:5000]
        run = self.client.create_run(self.experiment_id, run_name=run_name(record),
                                     start_time=int(started * 1000), tags=tags)
        series = [(self.context.metric, value, int((started + seconds) * 1000), step)
                  for step, seconds, value in curve_points(record)]
        self._log(run.info.run_id, recipe_params(record), outcome_metrics(record), series)
        failed = record.status in objective.FAILED_STATES
        self.client.set_terminated(run.info.run_id, "FAILED" if failed else "FINISHED",
                                   end_time=int((record.finished_at or time.time()) * 1000))

    def finish(self, results: SearchResults) -> None:
        metrics = {}
        if results.best_tta_seconds is not None:
            metrics["best_tta_seconds"] = float(results.best_tta_seconds)
        if results.speedup is not None:
            metrics["speedup"] = float(results.speedup)
        best = {f"best.{k}": v for k, v in recipe_params(results.best).items()} \
            if results.best else {}
        if results.best is not None:
            best["best.trial"] = results.best.trial
        self._log(self.parent_id, best, metrics, [])
        for path in results.artefacts:
            self.client.log_artifact(self.parent_id, str(path))

    def close(self, interrupted: bool) -> None:
        self.client.set_terminated(self.parent_id, "KILLED" if interrupted else "FINISHED")
