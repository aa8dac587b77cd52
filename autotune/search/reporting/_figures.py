"""The report's plots, as plotly figures made from a run's records and its Optuna study.

Each builder returns a ``Plot``: a figure, or a note saying why there is none yet (a running
search with one trial has no history to draw). Parameter importances come from Optuna's own
``optuna.visualization`` on the stored study; the rest is drawn from ``trials.jsonl``, which
has what the study does not (learning curves, measured memory, confirmation runs).

plotly and optuna are imported inside the builders: they are heavy optional imports that
``import autotune.search`` (and every CLI command) must not pay for.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune import objective
from autotune.memory import NOT_MEASURED
from autotune.results import TrialRecord
from autotune.search.reporting._data import RunData, describe_recipe
from autotune.search.winner import Candidate
from autotune.units import format_bytes, format_duration

FAILED_COLOR = "#d62728"
NO_TTA_COLOR = "#7f7f7f"
BASELINE_COLOR = "#111111"
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
           "#bcbd22")
HEIGHT = 460


@dataclass(frozen=True)
class Plot:
    """One figure of the report, or the reason there is none."""

    key: str
    """Stable id: the HTML element id (``plot-<key>``), which the browser test looks for."""
    title: str
    caption: str
    figure: Any = None
    """A ``plotly.graph_objects.Figure``; None when ``note`` says why there is none."""
    note: str = ""


def all_plots(run: RunData) -> list[Plot]:
    """Every plot of the report, in page order. A plot that fails to draw (records of an
    unusual run, a study Optuna cannot evaluate) becomes a note: the rest of the report stays."""
    plots = []
    for build in (winner_plot, curves_plot, memory_plot, history_plot, importance_plot):
        try:
            plots.append(build(run))
        except Exception as exc:  # noqa: BLE001 - one plot must not cost the whole report
            key = build.__name__.removesuffix("_plot")
            plots.append(Plot(key, key.capitalize(), "",
                              note=f"This plot could not be drawn: {type(exc).__name__}: {exc}"))
    return plots


# -- helpers ----------------------------------------------------------------------------------


def _figure(title_x: str, title_y: str) -> Any:
    import plotly.graph_objects as go  # heavy optional import (see the module docstring)

    fig = go.Figure()
    fig.update_layout(template="plotly_white", height=HEIGHT, xaxis_title=title_x,
                      yaxis_title=title_y, margin={"l": 70, "r": 30, "t": 30, "b": 60},
                      legend={"font": {"size": 11}})
    return fig


def _failed(record: TrialRecord) -> bool:
    return record.status in objective.FAILED_STATES


def _memory_unit(values: Sequence[float]) -> tuple[float, str]:
    """The binary unit (as the CLI's ``format_bytes``) in which the largest value is >= 1."""
    top = max(values, default=0.0)
    for size, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if top >= size:
            return float(size), name
    return 1.0, "bytes"


def _label(record: TrialRecord) -> str:
    if record.rerun_of is not None:
        return f"#{record.rerun_of} seed {record.seed}"
    tag = " (baseline)" if record.is_baseline else ""
    return f"#{record.trial}{tag} {record.status}"


def _hover(record: TrialRecord) -> str:
    return f"{_label(record)}<br>{describe_recipe(record.recipe)}"


# -- the winner against the baseline ----------------------------------------------------------


def winner_plot(run: RunData) -> Plot:
    """Each seed's time-to-target of the winner and of the baseline, with their medians."""
    title = "Winner against baseline"
    caption = ("Time-to-target of each run (one dot per seed) and the median (bar) that ranks "
               "a recipe; fewer seconds is better.")
    s = run.summary
    shown = [(name, c) for name, c in (("winner", s.best), ("baseline", s.baseline))
             if c is not None and c.tta_seconds is not None]
    if s.best is None:
        return Plot("winner", title, caption, note="No trial has reached the target yet.")
    if s.baseline is not None and s.baseline.record is s.best.record:
        shown = shown[:1]
    import plotly.graph_objects as go  # heavy optional import (see the module docstring)

    fig = _figure("", "time-to-target (s)")
    names = [f"{name} #{c.record.trial}" for name, c in shown]
    fig.add_trace(go.Bar(x=names, y=[c.tta_seconds for _, c in shown], name="median",
                         marker_color=["#2ca02c", "#7f7f7f"][:len(shown)], opacity=0.55,
                         text=[format_duration(c.tta_seconds) for _, c in shown],
                         textposition="outside", width=0.5))
    for (name, c), label in zip(shown, names):
        runs = [(t, seed) for t, seed in zip(c.tta_runs, c.seeds) if t is not None]
        fig.add_trace(go.Scatter(
            x=[label] * len(runs), y=[t for t, _ in runs], mode="markers", name=f"{name} runs",
            marker={"size": 11, "color": BASELINE_COLOR, "symbol": "circle-open"},
            hovertext=[f"seed {seed}: {t:.2f}s" for t, seed in runs], hoverinfo="text"))
    if s.speedup is not None:
        fig.add_annotation(text=f"speedup {s.speedup_text()}", xref="paper", yref="paper",
                           x=0.5, y=1.04, showarrow=False, font={"size": 14})
    if s.baseline is not None and s.baseline.tta_seconds is None:
        fig.add_annotation(text=f"baseline #{s.baseline.record.trial}: no time-to-target "
                                f"({s.baseline.record.status})", xref="paper", yref="paper",
                           x=1.0, y=0.95, xanchor="right", showarrow=False)
    fig.update_layout(showlegend=False, height=360, bargap=0.5)
    return Plot("winner", title, caption, fig)


# -- learning curves ----------------------------------------------------------------------------


def curves_plot(run: RunData) -> Plot:
    """The metric against training seconds for every trial that evaluated, the target as a
    line; trials without a time-to-target are dotted, failed ones red."""
    title = "Learning curves"
    caption = (f"Validation {run.metric} against training seconds (evaluation not counted) for "
               f"every trial; the target is {run.target_text()}. Solid: reached the target "
               "(a star at its time-to-target); dotted grey: stopped early or out of time; "
               "red dashed: failed. Confirmation runs are listed in the legend, hidden until "
               "clicked.")
    # Every record has its curve (a stopped trial's comes with its last intermediate report);
    # one an earlier autotune wrote has its last evaluation only, drawn as a one-point curve.
    with_curve = [r if r.curve or r.last_metric is None or r.train_seconds is None
                  else dataclasses.replace(r, curve=[[r.train_seconds, r.last_metric]])
                  for r in run.records]
    with_curve = [r for r in with_curve if r.curve]
    if not with_curve:
        return Plot("curves", title, caption, note="No trial has evaluated yet.")
    import plotly.graph_objects as go  # heavy optional import (see the module docstring)

    fig = _figure("training seconds", run.metric)
    for index, r in enumerate(with_curve):
        xs, ys = [p[0] for p in r.curve or []], [p[1] for p in r.curve or []]
        if _failed(r):
            line, opacity = {"color": FAILED_COLOR, "dash": "dash", "width": 2}, 0.9
        elif r.reached:
            color = BASELINE_COLOR if r.is_baseline else PALETTE[index % len(PALETTE)]
            line, opacity = {"color": color, "width": 3 if r.is_baseline else 2}, 1.0
        else:
            line, opacity = {"color": NO_TTA_COLOR, "dash": "dot", "width": 1.5}, 0.7
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines+markers", name=_label(r), line=line, opacity=opacity,
            marker={"size": 4}, hovertext=_hover(r), hoverinfo="text+x+y",
            visible=True if r.is_search_trial else "legendonly"))
        if r.reached and r.is_search_trial:
            at = min(range(len(xs)), key=lambda i: abs(xs[i] - (r.tta_seconds or 0.0)))
            fig.add_trace(go.Scatter(x=[xs[at]], y=[ys[at]], mode="markers", showlegend=False,
                                     marker={"symbol": "star", "size": 13,
                                             "color": line["color"]},
                                     hovertext=f"{_label(r)}: TTA {r.tta_seconds:.2f}s",
                                     hoverinfo="text"))
        elif _failed(r) and xs:
            fig.add_trace(go.Scatter(x=[xs[-1]], y=[ys[-1]], mode="markers", showlegend=False,
                                     marker={"symbol": "x", "size": 12, "color": FAILED_COLOR},
                                     hovertext=f"{_label(r)}: {r.message[:200]}",
                                     hoverinfo="text"))
    if run.target is not None:
        fig.add_hline(y=run.target, line={"color": "#d62728", "dash": "longdash", "width": 1},
                      annotation_text=f"target {run.comparison()} {run.target:g}",
                      annotation_position="top left")
    return Plot("curves", title, caption, fig)


# -- time-to-target against peak memory ---------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (memory, seconds) that no other point beats in both, by memory."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def _peak(record: TrialRecord) -> float | None:
    """Measured peak of a launched trial; the predicted one of a recipe never launched."""
    if record.launched and record.peak_memory_bytes:
        return float(record.peak_memory_bytes)
    if record.predicted_peak_bytes:
        return float(record.predicted_peak_bytes)
    return float((record.prediction or {}).get("peak_bytes") or 0) or None


def memory_plot(run: RunData) -> Plot:
    """Every recipe at (peak memory, time-to-target), the budget as a line, the Pareto front;
    recipes without a time-to-target in a band above, the memory gate's refusals at their
    predicted peak."""
    title = "Time-to-target against peak memory"
    caption = ("One point per recipe: the measured peak memory of its trial, and its "
               "time-to-target (the median over seeds where confirmed). Recipes that did not "
               "reach the target sit in the band at the top; recipes the memory gate refused "
               "(never launched) are drawn at their predicted peak. The line through the "
               "fastest recipes for their memory is the Pareto front; the red line is the "
               "budget.")
    pool = [(c, _peak(c.record)) for c in run.candidates]
    pool = [(c, peak) for c, peak in pool if peak is not None]
    if not pool:
        launched = [c.record for c in run.candidates if c.record.launched]
        if launched and all(r.peak_memory_source == NOT_MEASURED for r in launched):
            return Plot("memory", title, caption, note=(
                "Memory was not measured: on a CPU a search measures it only under a memory "
                "budget (--budget), since it costs each trial a second of setup."))
        return Plot("memory", title, caption, note="No trial has measured its memory yet.")
    import plotly.graph_objects as go  # heavy optional import (see the module docstring)

    largest = max(peak for _, peak in pool)
    budget = run.budget_bytes if run.budget_bytes and run.budget_bytes <= 4 * largest else None
    scale, unit = _memory_unit([largest, budget or 0])
    reached = [(c, peak) for c, peak in pool if c.tta_seconds is not None]
    top = max([c.tta_seconds or 0.0 for c, _ in reached], default=1.0) * 1.25 or 1.0
    fig = _figure(f"peak memory ({unit})", "time-to-target (s)")

    def add(group: list[tuple[Candidate, float]], name: str, y: Any, marker: dict) -> None:
        if group:
            fig.add_trace(go.Scatter(
                x=[peak / scale for _, peak in group], y=[y(c) for c, _ in group],
                mode="markers", name=f"{name} ({len(group)})", marker={"size": 11, **marker},
                hovertext=[f"{_hover(c.record)}<br>peak {format_bytes(peak)}" for c, peak in group],
                hoverinfo="text"))

    add([p for p in reached if not p[0].record.is_baseline], "reached the target",
        lambda c: c.tta_seconds, {"color": PALETTE[0]})
    add([p for p in reached if p[0].record.is_baseline], "baseline", lambda c: c.tta_seconds,
        {"color": BASELINE_COLOR, "symbol": "square"})
    no_tta = [p for p in pool if p[0].tta_seconds is None]
    add([p for p in no_tta if p[0].record.launched and not _failed(p[0].record)],
        "no time-to-target", lambda c: top, {"color": NO_TTA_COLOR, "symbol": "circle-open"})
    add([p for p in no_tta if p[0].record.launched and _failed(p[0].record)], "failed",
        lambda c: top, {"color": FAILED_COLOR, "symbol": "x"})
    add([p for p in no_tta if not p[0].record.launched], "refused by the memory gate",
        lambda c: top, {"color": FAILED_COLOR, "symbol": "diamond-open", "size": 13})
    front = pareto_front([(peak, c.tta_seconds or 0.0) for c, peak in reached])
    if front:
        fig.add_trace(go.Scatter(
            x=[x / scale for x, _ in front], y=[y for _, y in front], mode="lines+markers",
            name=f"Pareto front ({len(front)})", hoverinfo="skip",
            line={"shape": "hv", "color": "#2ca02c", "width": 2},
            marker={"symbol": "circle-open", "size": 17, "color": "#2ca02c"}))
    if no_tta:
        fig.add_hline(y=top, line={"color": NO_TTA_COLOR, "dash": "dot", "width": 1},
                      annotation_text="no time-to-target", annotation_position="bottom left")
    if budget:
        fig.add_vline(x=budget / scale, line={"color": "#d62728", "width": 2},
                      annotation_text=f"budget {format_bytes(budget)}",
                      annotation_position="top left")
    elif run.budget_bytes:  # far off to the right: drawing it would squash every point
        fig.add_annotation(
            text=f"budget {format_bytes(run.budget_bytes)} →<br>"
                 f"({run.budget_bytes / largest:,.0f}x the largest peak: off the chart)",
            xref="paper", yref="paper", x=1.0, y=0.5, xanchor="right", showarrow=False,
            font={"color": "#d62728"})
    fig.update_yaxes(rangemode="tozero")
    fig.update_xaxes(rangemode="tozero")
    return Plot("memory", title, caption, fig)


# -- optimisation history -------------------------------------------------------------------------


def history_plot(run: RunData) -> Plot:
    """The best time-to-target so far against search time, with each trial that reached."""
    title = "Optimisation history"
    caption = ("Best time-to-target found so far against search time (the wall-clock time the "
               "search ran; a resumed search's pause is left out). Dots: each search trial "
               "that reached the target, when it ended; open circles: confirmation runs.")
    ended = [r for r in run.records if r.finished_at is not None]
    search = [r for r in ended if r.is_search_trial and r.reached]
    if not search or not run.sessions:
        return Plot("history", title, caption,
                    note="No trial has reached the target yet: no history to draw.")
    import plotly.graph_objects as go  # heavy optional import (see the module docstring)

    fig = _figure("search time (s)", "time-to-target (s)")
    xs = [run.search_seconds(r.finished_at or 0.0) for r in search]
    best: list[float] = []
    for r in search:
        best.append(min(best[-1], r.tta_seconds or math.inf) if best else r.tta_seconds or 0.0)
    end = max(run.search_seconds(r.finished_at or 0.0) for r in ended)
    fig.add_trace(go.Scatter(x=[*xs, end], y=[*best, best[-1]], mode="lines",
                             line={"shape": "hv", "color": "#2ca02c", "width": 3},
                             name="best so far"))
    fig.add_trace(go.Scatter(x=xs, y=[r.tta_seconds for r in search], mode="markers",
                             name="trial", marker={"size": 9, "color": PALETTE[0]},
                             hovertext=[_hover(r) for r in search], hoverinfo="text+y"))
    reruns = [r for r in ended if not r.is_search_trial and r.reached]
    if reruns:
        fig.add_trace(go.Scatter(
            x=[run.search_seconds(r.finished_at or 0.0) for r in reruns],
            y=[r.tta_seconds for r in reruns], mode="markers", name="confirmation run",
            marker={"size": 9, "color": BASELINE_COLOR, "symbol": "circle-open"},
            hovertext=[_hover(r) for r in reruns], hoverinfo="text+y"))
    fig.update_yaxes(rangemode="tozero")
    return Plot("history", title, caption, fig)


# -- parameter importances (Optuna's) -------------------------------------------------------------


def load_study(journal: Path) -> Any:
    """The Optuna study stored in ``journal``, or None when there is none (yet). Read only:
    a missing file is not created."""
    if not journal.is_file() or journal.stat().st_size == 0:
        return None
    import optuna  # heavy optional import (see the module docstring)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    names = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=names[0], storage=storage) if names else None


def importance_plot(run: RunData, journal: Path | None = None) -> Plot:
    """Optuna's parameter importances (its default evaluator) for the score the search
    minimised, from the study in the run directory."""
    title = "Parameter importances"
    caption = ("Optuna's estimate (optuna.visualization.plot_param_importances, its default "
               "evaluator) of how much each search-space parameter explains the score the "
               "search minimises: the time-to-target, or a penalty for a trial without one. "
               "Read it as a hint: a search of a few dozen trials gives a rough estimate.")
    try:
        study = load_study(journal or run.path / "study.journal")
    except Exception as exc:  # noqa: BLE001 - a study Optuna cannot read still leaves a report
        return Plot("importance", title, caption, note=f"The study could not be read: {exc}")
    if study is None:
        return Plot("importance", title, caption, note="No Optuna study in the run directory yet.")
    import optuna.visualization  # heavy optional import (see the module docstring)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = optuna.visualization.plot_param_importances(study)
    except Exception as exc:  # noqa: BLE001 - Optuna refuses small studies in several ways
        return Plot("importance", title, caption,
                    note=f"Optuna cannot estimate importances yet: {exc}")
    if not fig.data or not len(fig.data[0].x or ()):
        return Plot("importance", title, caption, note=(
            "Optuna cannot estimate importances yet: it needs finished trials that differ in "
            "a parameter every trial has."))
    fig.update_layout(template="plotly_white", height=max(260, 60 + 40 * len(fig.data[0].y)),
                      title=None, margin={"l": 150, "r": 30, "t": 30, "b": 50})
    return Plot("importance", title, caption, fig)
