"""``--logger tensorboard|csv|mlflow`` against the real libraries writing real files, read back
with each one's own reader (TensorBoard's ``EventAccumulator``, pandas, ``mlflow.search_runs``
and ``MlflowClient``); ``-q`` and exit code 0; what a wrong ``--logger`` gets (exit 2).

``tracked_run`` (``tests/conftest.py``, session-scoped: ``tests/test_provenance.py`` reads the
same search) is one ``autotune search -q`` on the toy loss task, whose validation loss falls
over a second or two, so every trial has a curve of many evaluations.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from autotune.cli import main
from autotune.search.tracking import (
    CsvSink,
    MlflowSink,
    SearchResults,
    TensorBoardSink,
    Tracker,
    TrackingContext,
    run_name,
)

REPO = Path(__file__).resolve().parent.parent
METRIC = "val_loss"


def _run_cli(*args: str, env: dict | None = None, code: str | None = None
             ) -> subprocess.CompletedProcess:
    """``python -m autotune.cli ARGS``, or ``code`` before ``main(ARGS)`` (to take a library
    away, as an environment without it would)."""
    prefix = [sys.executable, "-c", f"{code}\nimport sys\nfrom autotune.cli import main\n"
              "sys.exit(main(sys.argv[1:]))"] if code else [sys.executable, "-m", "autotune.cli"]
    return subprocess.run([*prefix, *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)


def _same_series(logged: list[tuple[int, float]], curve: list[list[float]]) -> None:
    """The logged (step, value) pairs are the curve's points: step = training milliseconds."""
    assert [step for step, _ in logged] == [round(t * 1000) for t, _ in curve]
    assert [value for _, value in logged] == pytest.approx([m for _, m in curve], rel=1e-6)


def test_quiet_prints_only_the_result_and_a_winner_exits_0(tracked_run):
    done, results, records, _ = tracked_run
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("best recipe (trial #"), done.stdout
    # no --budget on a CPU: memory not measured, said so (not an RSS passed off as the peak)
    assert "peak memory not measured" in lines[1], done.stdout
    verdict = (results / "report.html").read_text()
    assert "not measured (a CPU search measures it only under --budget)" in verdict
    assert lines[-1] == f"wrote {results / 'best_recipe.yaml'}", done.stdout
    assert len(lines) == 4, done.stdout  # the verdict only: no plan, trial or status lines
    assert len(records) == 3 and all(r.curve for r in records)
    assert max(len(r.curve) for r in records) >= 2  # curves, not single points, are tracked


def test_tensorboard_has_each_trials_curve_and_recipe(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, results, records, _ = tracked_run
    root = results / "logs" / "tensorboard"
    for record in records:
        events = EventAccumulator(str(root / run_name(record)))
        events.Reload()
        scalars = events.Scalars(METRIC)
        _same_series([(s.step, s.value) for s in scalars], record.curve)
        start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
        assert hparams["lr"].number_value == pytest.approx(record.recipe["lr"])
        assert hparams["precision"].string_value == record.recipe["precision"]
        assert hparams["status"].string_value == record.status
    search = EventAccumulator(str(root / "search"))
    search.Reload()
    best = min((r for r in records if r.reached), key=lambda r: r.tta_seconds)
    assert search.Scalars("best/tta_seconds")[0].value == pytest.approx(best.tta_seconds)
    assert "best_recipe/text_summary" in search.Tags()["tensors"]


def test_csv_has_each_evaluation_and_each_recipe(tracked_run):
    _, results, records, _ = tracked_run
    curves = pd.read_csv(results / "logs" / "csv" / "curves.csv")
    recipes = pd.read_csv(results / "logs" / "csv" / "recipes.csv").set_index("trial")
    for record in records:
        rows = curves[curves.trial == record.trial]
        assert list(rows[METRIC]) == pytest.approx([m for _, m in record.curve])
        assert list(rows.train_seconds) == pytest.approx([t for t, _ in record.curve])
        assert recipes.loc[record.trial, "recipe.lr"] == pytest.approx(record.recipe["lr"])
        assert recipes.loc[record.trial, "status"] == record.status
    best = pd.read_csv(results / "logs" / "csv" / "best.csv")
    assert best.report_html[0] == str(results / "report.html")


def test_mlflow_has_a_search_run_with_the_files_and_a_child_run_per_trial(tracked_run):
    import mlflow
    from mlflow import MlflowClient

    _, results, records, _ = tracked_run
    uri = f"sqlite:///{(results / 'logs' / 'mlflow' / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["autotune"])
    parent = runs[runs["tags.autotune.kind"] == "search"]
    children = runs[runs["tags.mlflow.parentRunId"] == parent.run_id.iloc[0]]
    assert len(parent) == 1 and len(children) == len(records)
    client = MlflowClient(tracking_uri=uri)
    files = {a.path for a in client.list_artifacts(parent.run_id.iloc[0])}
    assert {"report.html", "best_recipe.yaml", "search.yaml"} <= files
    best = min((r for r in records if r.reached), key=lambda r: r.tta_seconds)
    assert parent["metrics.best_tta_seconds"].iloc[0] == pytest.approx(best.tta_seconds)
    assert parent["params.best.lr"].iloc[0] == str(best.recipe["lr"])
    for record in records:
        child = children[children["tags.autotune.trial"] == str(record.trial)].iloc[0]
        assert child["params.lr"] == str(record.recipe["lr"])
        assert child["tags.autotune.status"] == record.status
        history = client.get_metric_history(child.run_id, METRIC)
        _same_series([(m.step, m.value) for m in sorted(history, key=lambda m: m.step)],
                     record.curve)


def test_tracking_costs_little_per_trial(tracked_run, tmp_path, capsys):
    """Each logger's time per trial record (the driver pays it as a trial ends)."""
    _, _, records, _ = tracked_run
    context = TrackingContext(run_dir=tmp_path, metric=METRIC, model="toy", settings={})
    costs = {}
    for name, make in (("tensorboard", TensorBoardSink), ("csv", CsvSink),
                       ("mlflow", MlflowSink)):
        start = time.perf_counter()
        sink = make(context)
        opened = time.perf_counter() - start
        start = time.perf_counter()
        for record in records:
            sink.record(record)
        costs[name] = ((time.perf_counter() - start) / len(records), opened)
        sink.close(interrupted=False)
    with capsys.disabled():
        print("\ntracking cost per trial (s), and to open: " + ", ".join(
            f"{k} {v:.3f} (open {o:.2f})" for k, (v, o) in costs.items()))
    assert all(per < 2.0 for per, _ in costs.values()), costs


def test_a_logger_that_fails_is_a_warning_and_switched_off(tracked_run, tmp_path):
    _, _, records, _ = tracked_run
    warnings: list[str] = []
    context = TrackingContext(run_dir=tmp_path, metric=METRIC, model="toy", settings={})
    tracker = Tracker({"csv": CsvSink(context)}, lambda kind, text: warnings.append(text))
    shutil.rmtree(tmp_path / "logs" / "csv")
    (tmp_path / "logs" / "csv").write_text("not a folder")  # the disk changed under it
    tracker.on_record(records[0])
    tracker.on_record(records[1])
    tracker.finish(SearchResults(None, None, None, ()))
    assert len(warnings) == 1 and "--logger csv failed (trial 1" in warnings[0], warnings
    assert "off for the rest of this search" in warnings[0] and not tracker.sinks


def test_an_unknown_logger_exits_2_with_the_choices(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["search", "--model", "mnist", "--logger", "wandb"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "argument --logger: invalid choice: 'wandb' (choose from" in err
    assert all(name in err.split("choose from")[1] for name in ("csv", "mlflow", "tensorboard"))


def test_a_logger_whose_library_is_missing_exits_2_with_the_pip_command(tmp_path):
    done = _run_cli("search", "--model", "tests.toy_task:make_task", "--results-dir",
                    str(tmp_path / "run"), "--logger", "mlflow",
                    code="import sys; sys.modules['mlflow'] = None  # as if not installed")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--logger mlflow needs mlflow, which is not installed" in done.stderr
    assert "pip install 'autotune[mlflow]'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_mlflow_uri_without_the_mlflow_logger_exits_2(capsys):
    assert main(["search", "--model", "mnist", "--mlflow-uri", "sqlite:///x.db"]) == 2
    assert "--mlflow-uri is where --logger mlflow writes; add --logger mlflow" in \
        capsys.readouterr().err
