"""``report.html`` and ``trials.csv`` from a real search, the stored study in Optuna's own tools
(``optuna.load_study``, ``optuna-dashboard`` over HTTP), and the page in a real browser.

One real search on a toy task (``loss_run``: a metric where lower is better, a recipe the
memory gate refuses, a confirmation run) whose report is written while it runs and, by the
search itself, when it ends.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from autotune import objective
from autotune.cli import main
from autotune.memory import predict_peak
from autotune.recipe import Recipe
from autotune.results import REFUSED, ScreenRecord
from autotune.search import SearchRequest, search
from autotune.search.reporting import (
    load_run,
    pareto_front,
    write_report,
    write_report_after_search,
)
from autotune.search.reporting._figures import (
    curves_plot,
    history_plot,
    importance_plot,
    memory_plot,
    winner_plot,
)
from autotune.search.screening import screening_document
from autotune.tasks import load_task

PLOTS = ("winner", "curves", "memory", "history", "importance")
LOSS_TARGET = 0.26

SPACE = """\
knobs:
  batch_size: {choices: [16, 32, 256]}
  optimizer: {choices: [adamw, sgd]}
  lr: {low: 1.0e-4, high: 3.0e-2, log: true, when: {optimizer: adamw}}
  lr@sgd: {low: 0.001, high: 0.3, log: true, when: {optimizer: sgd}}
  warmup_steps: {choices: [0, 5]}
"""


def _budget_between(model: str) -> int:
    """A budget that the baseline (batch 32) fits and batch 256 does not (as predicted)."""
    task = load_task(model)
    small = predict_peak(task, Recipe(batch_size=32, lr=1e-2)).peak_bytes
    large = predict_peak(task, Recipe(batch_size=256, lr=1e-2)).peak_bytes
    return int((small * 1.1 + large) / 2)


@pytest.fixture(scope="module")
def loss_run(tmp_path_factory):
    """A search of a lower-is-better metric; batch 256 (the task's warm-start suggestion,
    tried second) is over the budget, so the memory gate refuses it. Its report is also
    written while it runs (from the event of its third ended trial, while the search holds
    its directory), and by the search itself when it ends."""
    tmp = tmp_path_factory.mktemp("loss")
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    model = "tests.toy_task:make_loss_task"
    run = tmp / "run"
    events, during = [], {}

    def on_event(kind, payload):
        events.append(kind)
        if kind == "finished" and payload.trial == 3 and not during:
            files = write_report(run)
            during.update(files=files, html=files.html.read_text(),
                          csv=pd.read_csv(files.csv))

    outcome = search(SearchRequest(
        model=model, task_options={"suggest": {"batch_size": 256}, "target": LOSS_TARGET},
        task_warm_start=True, space=str(space), budget_bytes=_budget_between(model), trials=5,
        time_budget_s=120, max_trial_seconds=2.0, seed=0, confirm_top=1, confirm_seeds=1,
        # no screening: it would refuse batch 256 before the trials, which show the refusal
        results_dir=str(run), screen=False), on_event=on_event)
    return outcome, events, during


def _search_trials(outcome):
    return [r for r in outcome.records if r.is_search_trial]


# -- the files a search writes ------------------------------------------------------------------


def test_a_search_writes_a_self_contained_report_when_it_ends(loss_run):
    outcome, events, _ = loss_run
    assert "warning" not in events
    html = (outcome.run_dir / "report.html").read_text()
    assert (outcome.run_dir / "trials.csv").exists()
    for key in PLOTS:
        assert f'id="plot-{key}"' in html, key
    # opens offline: plotly.js is inline, nothing is loaded from elsewhere
    assert "<script src" not in html.replace("<script src=\"data:", "") and "<link" not in html
    assert len(html) > 3_000_000 and "Plotly.newPlot" in html
    # the leaderboard has a row per search trial; the verdict names the winner, the
    # direction of the metric and the speedup
    assert html.count("<tr") >= len(_search_trials(outcome)) + 1
    best = outcome.summary.best
    assert f"Trial #{best.record.trial} reaches val_loss &lt;= {LOSS_TARGET:g}" in html
    assert f"{outcome.summary.speedup_text()}</b> faster than the baseline" in html
    assert "finished " in html and "in progress (or" not in html


def test_trials_csv_has_one_flat_row_per_trial(loss_run):
    outcome, _, _ = loss_run
    table = pd.read_csv(outcome.run_dir / "trials.csv")
    assert len(table) == len(outcome.records) >= 6
    assert {"trial", "status", "tta_seconds", "peak_memory_bytes", "recipe.batch_size",
            "recipe.lr", "recipe.optimizer", "prediction.peak_bytes", "curve_points"} \
        <= set(table.columns)
    for record, (_, row) in zip(outcome.records, table.iterrows()):
        assert row["trial"] == record.trial and row["status"] == record.status
        assert row["recipe.batch_size"] == record.recipe["batch_size"]
        assert row["recipe.lr"] == pytest.approx(record.recipe["lr"])
        assert row["curve_points"] == len(record.curve or [])
        if record.tta_seconds is None:
            assert pd.isna(row["tta_seconds"])
        else:
            assert row["tta_seconds"] == pytest.approx(record.tta_seconds)
    refused = table[~table["launched"]]
    assert list(refused["recipe.batch_size"]) == [256]
    assert list(refused["status"]) == [objective.INFEASIBLE]
    assert refused["prediction.peak_bytes"].iloc[0] > outcome.plan.request.budget_bytes


# -- what the plots show ----------------------------------------------------------------------


def test_the_winner_against_the_baseline_shows_each_seed_and_the_median(loss_run):
    outcome, _, _ = loss_run
    fig = winner_plot(load_run(outcome.run_dir)).figure
    s = outcome.summary
    shown = [c for c in (s.best, s.baseline) if c.tta_seconds is not None]
    if s.baseline.record is s.best.record:
        shown = shown[:1]
    bars, *dots = fig.data
    assert list(bars.y) == pytest.approx([c.tta_seconds for c in shown])
    assert s.best.confirmed
    assert [list(d.y) for d in dots] == [[t for t in c.tta_runs if t is not None]
                                         for c in shown]


def test_learning_curves_show_every_trial_and_the_target(loss_run):
    outcome, _, _ = loss_run
    run = load_run(outcome.run_dir)
    assert not run.higher_is_better and run.target == LOSS_TARGET
    fig = curves_plot(run).figure
    lines = [t for t in fig.data if t.showlegend is not False and t.mode == "lines+markers"]
    with_curve = [r for r in outcome.records if r.curve]
    assert len(lines) == len(with_curve) >= 3
    # every record of this version keeps its curve, stopped trials too
    assert all(r.curve for r in outcome.records if r.last_metric is not None)
    for trace, record in zip(lines, with_curve):
        assert list(trace.x) == [p[0] for p in record.curve]
        assert list(trace.y) == [p[1] for p in record.curve]
        # no time-to-target: dotted; reached: solid
        assert (trace.line.dash == "dot") == (not record.reached
                                              and record.status not in objective.FAILED_STATES)
    assert [s.y0 for s in fig.layout.shapes] == [LOSS_TARGET]
    assert f"target &lt;= {LOSS_TARGET:g}" in fig.to_html(include_plotlyjs=False) or \
        f"target <= {LOSS_TARGET:g}" in [a.text for a in fig.layout.annotations]


def test_tta_against_memory_has_the_budget_the_front_and_the_refused_recipe(loss_run):
    outcome, _, _ = loss_run
    run = load_run(outcome.run_dir)
    fig = memory_plot(run).figure
    traces = {t.name.rsplit(" (", 1)[0]: t for t in fig.data}
    assert fig.layout.xaxis.title.text == "peak memory (KiB)"
    budget = outcome.plan.request.budget_bytes
    assert [s.x0 for s in fig.layout.shapes if s.x0 == s.x1] == [pytest.approx(budget / 1024)]
    refused = [r for r in outcome.records if not r.launched]
    gate = traces["refused by the memory gate"]
    assert list(gate.x) == [pytest.approx(r.predicted_peak_bytes / 1024) for r in refused]
    assert min(gate.x) > budget / 1024  # drawn beyond the budget line, where it was predicted
    # the front: exactly the recipes no other recipe beats in both memory and time
    points = [(r.peak_memory_bytes / 1024, c.tta_seconds) for c in run.candidates
              for r in [c.record] if c.tta_seconds is not None]
    expected = sorted(p for p in points if not any(
        q[0] <= p[0] and q[1] <= p[1] and q != p for q in points))
    front = traces["Pareto front"]
    assert len(expected) >= 1
    assert [v for p in sorted(zip(front.x, front.y)) for v in p] == \
        pytest.approx([v for p in expected for v in p])


def test_pareto_front_keeps_what_nothing_beats_in_both():
    points = [(10, 5.0), (20, 3.0), (15, 6.0), (30, 3.0), (40, 1.0), (5, 9.0)]
    assert pareto_front(points) == [(5, 9.0), (10, 5.0), (20, 3.0), (40, 1.0)]


def test_history_is_the_best_time_to_target_so_far(loss_run):
    outcome, _, _ = loss_run
    run = load_run(outcome.run_dir)
    best_line = history_plot(run).figure.data[0]
    assert best_line.name == "best so far"
    ys = list(best_line.y)
    assert ys == sorted(ys, reverse=True)
    reached = [r.tta_seconds for r in _search_trials(outcome) if r.reached]
    assert ys[-1] == pytest.approx(min(reached))
    assert max(best_line.x) <= sum(s["ended_at"] - s["started_at"] for s in run.sessions)


def test_parameter_importances_come_from_the_stored_study(loss_run):
    outcome, _, _ = loss_run
    plot = importance_plot(load_run(outcome.run_dir))
    assert plot.figure is not None, plot.note
    storage = JournalStorage(JournalFileBackend(str(outcome.run_dir / "study.journal")))
    study = optuna.load_study(study_name="autotune", storage=storage)
    names = set(plot.figure.data[0].y)
    assert len(names) >= 2 and names <= {p for t in study.trials for p in t.params}
    assert sum(plot.figure.data[0].x) == pytest.approx(1.0, abs=0.02)  # Optuna's, normalised


# -- a running search, a torn line, bad input, a failing report -----------------------------------


def test_a_running_search_gets_a_report_of_the_trials_so_far(loss_run):
    outcome, _, during = loss_run
    assert during, "the report was not written while the search ran"
    assert "in progress (or stopped without finishing)" in during["html"]
    assert list(during["csv"]["trial"]) == [1, 2, 3]
    assert {"curves", "memory"} <= set(during["files"].plots)
    # the search's own report at the end has every trial
    final = (outcome.run_dir / "report.html").read_text()
    assert "finished " in final and "in progress (or" not in final
    assert len(pd.read_csv(outcome.run_dir / "trials.csv")) == len(outcome.records) > 3


def test_a_torn_last_line_is_skipped_with_a_note(loss_run, tmp_path, capsys):
    outcome, _, _ = loss_run
    copy = tmp_path / "run"
    shutil.copytree(outcome.run_dir, copy, ignore=shutil.ignore_patterns("ray"))
    with open(copy / "trials.jsonl", "a") as f:
        f.write('{"schema": 1, "trial": 99, "status": "rea')  # a write cut short
    assert main(["report", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {copy / 'report.html'}" in out and f"wrote {copy / 'trials.csv'}" in out
    assert "a torn write" in (copy / "report.html").read_text()
    assert len(pd.read_csv(copy / "trials.csv")) == len(outcome.records)


@pytest.mark.parametrize("kind", ["missing", "file", "empty folder"])
def test_report_on_what_is_not_a_run_directory_exits_2_with_one_paragraph(kind, tmp_path,
                                                                         capsys):
    path = tmp_path / "x"
    if kind == "file":
        path.write_text("not a run\n")
    elif kind == "empty folder":
        path.mkdir()
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"autotune: error: {path}") and "Traceback" not in err
    assert err.count("\n") == 1 and "settings.json" in err


def test_a_report_that_cannot_be_written_is_a_warning_not_a_lost_search(loss_run, tmp_path):
    outcome, _, _ = loss_run
    copy = tmp_path / "run"
    shutil.copytree(outcome.run_dir, copy, ignore=shutil.ignore_patterns("ray", "report.html"))
    (copy / "report.html").mkdir()  # in the way: the page cannot be written
    warnings = []
    write_report_after_search(copy, lambda kind, payload: warnings.append((kind, payload)))
    assert len(warnings) == 1 and warnings[0][0] == "warning"
    assert f"autotune report {copy}" in warnings[0][1]


def test_a_study_optuna_cannot_read_costs_only_its_plot(loss_run, tmp_path):
    outcome, _, _ = loss_run
    copy = tmp_path / "run"
    shutil.copytree(outcome.run_dir, copy, ignore=shutil.ignore_patterns("ray"))
    (copy / "study.journal").write_text("{not a journal\n")
    files = write_report(copy)
    assert files.plots == ("winner", "curves", "memory", "history")
    assert 'id="plot-importance-note"' in files.html.read_text()


# -- the study in Optuna's own tools ------------------------------------------------------------


def test_optuna_load_study_opens_the_stored_study(loss_run):
    outcome, _, _ = loss_run
    storage = JournalStorage(JournalFileBackend(str(outcome.run_dir / "study.journal")))
    study = optuna.load_study(study_name="autotune", storage=storage)
    searched = _search_trials(outcome)
    assert len(study.trials) == len(searched)
    for record in searched:
        assert study.trials[record.study_trial].value == pytest.approx(record.score)
    assert study.best_value == pytest.approx(min(r.score for r in searched))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_optuna_dashboard_serves_the_stored_study(loss_run):
    outcome, _, _ = loss_run
    command = shutil.which("optuna-dashboard", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if command is None:
        pytest.skip("optuna-dashboard is not installed (pip install 'autotune[dashboard]')")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [command, "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref",
         str(outcome.run_dir / "study.journal")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                studies = _get_json(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == ["autotune"]
        detail = _get_json(f"{base}/api/studies/{studies[0]['study_id']}")
        searched = {r.study_trial: r for r in _search_trials(outcome)}
        assert sorted(t["number"] for t in detail["trials"]) == sorted(searched)
        for trial in detail["trials"]:
            record = searched[trial["number"]]
            assert trial["values"] == [pytest.approx(record.score)]
            attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
            assert attrs["status"] == record.status
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode is not None


# -- the page in a real browser -----------------------------------------------------------------


class _PlotScan(HTMLParser):
    """Per plot div (``id="plot-<key>"``): its SVG roots and the marks drawn in its traces
    (``path`` elements with a shape, inside a ``g.trace`` group)."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str, str | None]] = []
        self.svgs: dict[str, int] = {}
        self.marks: dict[str, int] = {}
        self.errors: str | None = None

    def _plot(self) -> str | None:
        return next((key for _, _, key in reversed(self.stack) if key), None)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.errors = a.get("data-script-errors")
        ident = a.get("id") or ""
        key = ident[len("plot-"):] if ident.startswith("plot-") and tag == "div" else None
        plot = key or self._plot()
        if plot and tag == "svg" and "main-svg" in (a.get("class") or ""):
            self.svgs[plot] = self.svgs.get(plot, 0) + 1
        in_trace = any(c.startswith("trace") for _, c, _ in self.stack)
        if plot and tag == "path" and in_trace and (a.get("d") or "").strip() not in ("", "M0,0Z"):
            self.marks[plot] = self.marks.get(plot, 0) + 1
        if tag not in self.VOID:
            self.stack.append((tag, a.get("class") or "", key))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    # --no-sandbox: Chromium refuses to run as root (CI containers) with its sandbox on; the
    # page is our own local file.
    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--virtual-time-budget=20000", *args],
        capture_output=True, text=True, timeout=180)


def test_the_report_renders_in_a_real_browser(loss_run, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed: `make setup` installs it (Debian package "
                    "chromium, as root with apt-get)")
    outcome, _, _ = loss_run
    page = (outcome.run_dir / "report.html").as_uri()
    dom = _chromium("--dump-dom", page, profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-3000:]
    scan = _PlotScan()
    scan.feed(dom.stdout)
    assert scan.errors == "[]", f"script errors in the page: {scan.errors}"
    for key in PLOTS:
        assert scan.svgs.get(key, 0) >= 1, f"plot {key} has no SVG: not rendered"
        assert scan.marks.get(key, 0) >= 1, f"plot {key} rendered nothing in its traces"
    shot = tmp_path / "report.png"
    done = _chromium("--window-size=1280,3200", f"--screenshot={shot}", page,
                     profile=tmp_path / "profile")
    assert done.returncode == 0 and shot.exists(), done.stderr[-3000:]
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1280, 3200)
    assert shot.stat().st_size > 100_000  # plots and text, not a blank page


def test_a_record_without_its_curve_is_drawn_at_its_last_evaluation(loss_run, tmp_path):
    # Records written before stopped trials kept their curve have none: such a trial is
    # drawn as a one-point curve at its last evaluation.
    outcome, _, _ = loss_run
    copy = tmp_path / "old_run"
    shutil.copytree(outcome.run_dir, copy)
    lines = (copy / "trials.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    old = next(r for r in records if r["curve"] and r["last_metric"] is not None)
    old["curve"] = None
    (copy / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    fig = curves_plot(load_run(copy)).figure
    points = [(list(t.x), list(t.y)) for t in fig.data if t.mode == "lines+markers"]
    assert ([old["train_seconds"]], [old["last_metric"]]) in points
    assert len(points) == len([r for r in records if r["curve"] or r["last_metric"]])


def test_the_screening_shows_each_configuration_its_speed_and_whether_it_was_kept(
        loss_run, tmp_path):
    outcome, _, _ = loss_run
    copy = tmp_path / "screened_run"
    shutil.copytree(outcome.run_dir, copy)
    doc = yaml.safe_load((copy / "search.yaml").read_text())
    doc["screening"] = screening_document([
        ScreenRecord(label="baseline", config={}, status="ok", is_baseline=True,
                     examples_per_second=1000.0, step_seconds=0.032, peak_memory_bytes=2 * 10**6),
        ScreenRecord(label="precision=bf16", config={"precision": "bf16"}, status="ok", order=1,
                     examples_per_second=1500.0, step_seconds=0.021,
                     peak_memory_bytes=10**6),
        ScreenRecord(label="batch_size=512", config={"batch_size": 512}, status=REFUSED,
                     order=2, message="predicted over the budget")], sampled_from=5)
    (copy / "search.yaml").write_text(yaml.safe_dump(doc))
    html = (write_report(copy).html).read_text()
    section = html.split('<h2 id="screening">')[1].split("<h2")[0]
    assert "timed 3 system configurations (sampled from 5)" in section
    rows = section.split("<tr")[2:]
    assert len(rows) == 3
    assert "precision=bf16" in rows[0] and ">yes<" in rows[0] and "1500" in rows[0]
    assert "batch_size=512" in rows[2] and ">no<" in rows[2] and "dropped" in rows[2]
    # A search that did not screen has no such section.
    html = (write_report(outcome.run_dir).html).read_text()
    assert 'id="screening"' not in html
