"""``report.html``: one self-contained page (plotly.js inline, no network) of a run's results.

Sections, top down: the verdict (the winner against the baseline), the leaderboard, the plots
(``_figures``), then the machine, versions and settings. The page records any script error in
``<html data-script-errors>`` (a JSON list) and shows it at the top, so that a browser test
(and a person) sees a plot that failed to draw instead of an empty box.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any

from autotune import objective
from autotune.memory import NOT_MEASURED
from autotune.search.reporting._data import NOT_MEASURED_TEXT, RunData, describe_recipe, stamp
from autotune.search.reporting._figures import Plot, all_plots
from autotune.search.winner import Candidate
from autotune.units import format_bytes, format_duration

ERROR_CATCHER = """
(function () {
  var errors = [];
  function show() {
    var box = document.getElementById("script-errors");
    if (box && errors.length) {
      box.hidden = false;
      box.textContent = "Script errors on this page (a plot may be missing):\\n" +
        errors.join("\\n");
    }
  }
  function record(text) {
    errors.push(String(text));
    document.documentElement.setAttribute("data-script-errors", JSON.stringify(errors));
    show();
  }
  window.addEventListener("error", function (e) {
    record((e.message || "error") + " (" + (e.filename || "page") + ":" + (e.lineno || 0) + ")");
  });
  window.addEventListener("unhandledrejection", function (e) {
    var reason = e.reason && e.reason.message ? e.reason.message : e.reason;
    record("unhandled promise rejection: " + reason);
  });
  document.addEventListener("DOMContentLoaded", show);
})();
"""

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1180px; padding: 18px 28px 60px; color: #1b1b1b; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.88em; margin: 8px 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 4px 10px; text-align: left;
         vertical-align: top; }
th { background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.winner td { background: #eaf6ea; }
tr.baseline td { background: #f1f1f1; }
tr.dropped td { color: #888; }
.status-reached { color: #1a7f1a; } .status-failed { color: #c0392b; }
.status-none { color: #777; }
.caption { color: #555; font-size: 0.9em; max-width: 62em; }
.note { color: #8a5a00; background: #fff6e0; padding: 6px 10px; border-radius: 4px; }
#script-errors { color: #fff; background: #c0392b; padding: 8px; white-space: pre-wrap; }
.verdict { font-size: 1.1em; }
pre.space { background: #f6f6f6; padding: 8px; font-size: 0.85em; overflow-x: auto; }
.plot { border: 1px solid #eee; }
"""

PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def render(run: RunData, plotly_js: str, plots: list[Plot] | None = None) -> str:
    """The whole page; ``plotly_js`` is plotly.js itself, put inline once."""
    plots = all_plots(run) if plots is None else plots
    body = [_header(run), '<pre id="script-errors" hidden></pre>', _notes(run),
            _verdict(run), plots_section(plots[:1]), _leaderboard(run), _screening(run),
            plots_section(plots[1:]), _about(run)]
    return (
        '<!DOCTYPE html>\n<html lang="en" data-script-errors="[]">\n<head>\n'
        '<meta charset="utf-8">\n'
        f"<title>autotune report: {escape(run.model)}</title>\n"
        f"<script>{ERROR_CATCHER}</script>\n<style>{STYLE}</style>\n"
        f'<script type="text/javascript">{plotly_js}</script>\n</head>\n<body>\n'
        + "\n".join(part for part in body if part) + "\n</body>\n</html>\n"
    )


def _header(run: RunData) -> str:
    ended = len([r for r in run.records if r.is_search_trial])
    if run.finished:
        state = f"finished {stamp(run.sessions[-1].get('ended_at'))}"
    else:
        state = (f"in progress (or stopped without finishing): what {ended} trials recorded "
                 f"by {stamp(time.time())}")
    return (f"<h1>autotune report: {escape(run.model)}</h1>\n"
            f'<p class="sub">{escape(str(run.path))} &middot; {escape(state)} &middot; target '
            f"{escape(run.target_text())} &middot; {ended} search trials, "
            f"{len(run.records) - ended} confirmation runs</p>")


def _notes(run: RunData) -> str:
    if not run.notes:
        return ""
    return "\n".join(f'<p class="note">{escape(n)}</p>' for n in run.notes)


# -- the verdict --------------------------------------------------------------------------------


def _tta_text(c: Candidate | None) -> str:
    if c is None:
        return "-"
    if c.tta_seconds is None:
        return f"none ({c.record.status})"
    text = format_duration(c.tta_seconds)
    if c.confirmed:
        runs = ", ".join("-" if t is None else f"{t:.2f}" for t in c.tta_runs)
        text += f" (median of {len(c.runs)} seeds: {runs})"
    return text


def _spread_text(c: Candidate | None) -> str:
    if c is None or not c.confirmed:
        return "- (one seed)"
    low, high = c.tta_spread
    return f"{low:.2f}s to {high:.2f}s" if high is not None else \
        f"{low:.2f}s to not reached" if low is not None else "-"


def _verdict(run: RunData) -> str:
    s = run.summary
    if s.best is None:
        return ('<h2 id="verdict">Verdict</h2>\n<p class="verdict">No trial has reached the '
                f"target ({escape(run.target_text())}) yet.</p>")
    rows = [("", "winner" + ("" if run.finished else " so far"), "baseline")]
    pair = (s.best, s.baseline)

    def line(name: str, value: Any) -> None:
        rows.append((name, *(escape(value(c)) if c is not None else "-" for c in pair)))

    line("trial", lambda c: f"#{c.record.trial}")
    line("recipe", lambda c: describe_recipe(c.record.recipe))
    line("time-to-target", _tta_text)
    line("spread over seeds", _spread_text)
    line(f"best {run.metric}", lambda c: _number(c.record.best_metric))
    line("peak memory measured", lambda c: _bytes(c.record.peak_memory_bytes,
                                                 c.record.peak_memory_source))
    line("peak memory predicted", lambda c: _bytes(c.record.predicted_peak_bytes))
    line("prediction error", lambda c: _percent(c.record.prediction_error))
    table = _table(rows[0], rows[1:])
    speedup = f"<b>{escape(s.speedup_text())}</b> faster than the baseline" \
        if s.speedup is not None else "no speedup to state (the baseline has no time-to-target)"
    return (f'<h2 id="verdict">Verdict</h2>\n<p class="verdict">Trial #{s.best.record.trial} '
            f"reaches {escape(run.target_text())} in {escape(format_duration(s.best.tta_seconds))}"
            f" of training: {speedup}.</p>\n{table}")


# -- the leaderboard ----------------------------------------------------------------------------


def ranked(cands: list[Candidate]) -> list[Candidate]:
    """Confirmed recipes first by median time-to-target, then every other trial by its score
    (the order of the CLI's leaderboard, ``autotune.report.leaderboard``)."""

    def key(c: Candidate) -> tuple:
        if c.confirmed:
            return (0, c.tta_seconds or float("inf"), c.record.trial)
        return (1, c.record.score if c.record.score is not None else float("inf"),
                c.record.trial)

    return sorted(cands, key=key)


def _status_class(status: str) -> str:
    if status == objective.REACHED:
        return "status-reached"
    return "status-failed" if status in objective.FAILED_STATES else "status-none"


def _leaderboard(run: RunData) -> str:
    head = ("rank", "trial", "status", "time-to-target", f"best {run.metric}", "peak memory",
            "predicted", "recipe", "why / note")
    rows, classes = [], []
    best = run.summary.best.record.trial if run.summary.best else None
    for rank, c in enumerate(ranked(run.candidates), 1):
        r = c.record
        note = r.warm_start_name and f"warm start: {r.warm_start_name}" or ""
        if r.status != objective.REACHED:
            note = "; ".join(x for x in (note, r.message.strip()[:160]) if x)
        rows.append((str(rank), f"#{r.trial}" + ("*" if r.is_baseline else ""),
                     f'<span class="{_status_class(r.status)}">{escape(r.status)}</span>',
                     escape(_tta_text(c)) if c.tta_seconds else "-",
                     _number(r.best_metric), _bytes(r.peak_memory_bytes),
                     _bytes(r.predicted_peak_bytes), escape(describe_recipe(r.recipe)),
                     escape(note)))
        classes.append("winner" if r.trial == best else "baseline" if r.is_baseline else "")
    return ('<h2 id="leaderboard">Leaderboard</h2>\n<p class="caption">Every recipe the search '
            "tried, fastest first (* the baseline; a confirmed recipe ranks by its median over "
            "seeds; the rest by the score the search minimised).</p>\n"
            + _table(head, rows, classes))


def _screening(run: RunData) -> str:
    """The screening of system configurations (``search.yaml``'s ``screening``: each timed
    configuration's speed and memory, its rank, and whether it was kept for the convergence
    trials, and why); empty when the search did not screen."""
    doc = run.search.get("screening")
    if not isinstance(doc, dict) or not doc.get("results"):
        return ""
    head = ("rank", "kept", "examples/s", "step", "peak memory", "compile", "configuration",
            "why")
    rows, classes = [], []
    for row in doc["results"]:
        step = row.get("step_seconds")
        config = row.get("configuration") or {}
        rows.append((
            str(row.get("rank") or "-"), "yes" if row.get("kept") else "no",
            _number(row.get("examples_per_second")),
            f"{1000 * step:.1f} ms" if step else "-", _bytes(row.get("peak_memory_bytes")),
            f"{row['compile_seconds']:.1f} s" if row.get("compile_seconds") else "-",
            escape(" ".join(f"{k}={v}" for k, v in config.items()) or "baseline"),
            escape(str(row.get("why") or row.get("status") or ""))))
        classes.append("" if row.get("kept") else "dropped")
    sampled = doc.get("sampled_from")
    of = f" (sampled from {sampled})" if sampled else ""
    return ('<h2 id="screening">Screening</h2>\n<p class="caption">Before the convergence '
            f"trials the search timed {doc.get('configurations')} system configurations{of} "
            "for a few seconds each (no convergence needed) and kept "
            f"{doc.get('kept')} for the trials: examples per second in the best window of the "
            "timed steps, and peak memory (docs/concepts.md, Screening).</p>\n"
            + _table(head, rows, classes))


# -- plots ------------------------------------------------------------------------------------


def plots_section(plots: list[Plot]) -> str:
    """Each plot's heading, caption and figure (or the note why there is none)."""
    parts = []
    for p in plots:
        parts.append(f'<h2 id="{p.key}">{escape(p.title)}</h2>\n'
                     f'<p class="caption">{escape(p.caption)}</p>')
        if p.figure is None:
            parts.append(f'<p class="note" id="plot-{p.key}-note">{escape(p.note)}</p>')
        else:
            parts.append('<div class="plot">' + p.figure.to_html(
                full_html=False, include_plotlyjs=False, div_id=f"plot-{p.key}",
                config=PLOT_CONFIG) + "</div>")
    return "\n".join(parts)


# -- machine, versions, settings ------------------------------------------------------------------


def _about(run: RunData) -> str:
    hosts = sorted({r.hostname for r in run.records if r.hostname})
    devices = sorted({r.device for r in run.records if r.device})
    task = run.search.get("task") or {}
    machine = [("device", run.search.get("device", "-")), ("trial devices", ", ".join(devices)),
               ("hosts", ", ".join(hosts)), ("task", task.get("description") or run.model),
               ("target", run.target_text())]
    sessions = [(f"run {i}", f"{stamp(s.get('started_at'))} to "
                 f"{stamp(s.get('ended_at')) if s.get('ended_at') else 'not ended'}")
                for i, s in enumerate(run.sessions, 1)]
    settings = [(k, v if isinstance(v, str) else json.dumps(v))
                for k, v in run.settings.items()]
    return "\n".join([
        '<h2 id="about">Machine, versions and settings</h2>',
        _table(("machine", ""), [(escape(k), escape(str(v))) for k, v in machine + sessions]),
        f'<p class="caption">Versions from {escape(run.versions_source)}.</p>',
        _table(("library", "version"), [(escape(k), escape(str(v)))
                                        for k, v in run.versions.items()]),
        '<p class="caption">The search\'s settings (settings.json):</p>',
        _table(("setting", "value"), [(escape(k), escape(v)) for k, v in settings]),
        f"<details><summary>search space (space.yaml)</summary>"
        f'<pre class="space">{escape(run.space_text)}</pre></details>',
    ])


# -- cells --------------------------------------------------------------------------------------


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]],
           classes: list[str] | None = None) -> str:
    """An HTML table of ``rows``, whose cells are HTML the caller has escaped."""
    out = ["<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(
            f'<td class="num">{cell}</td>' if _numeric(cell) else f"<td>{cell}</td>"
            for cell in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _numeric(cell: str) -> bool:
    return bool(cell) and (cell[0].isdigit() or cell[:1] == "#")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _bytes(value: int | None, source: str | None = None) -> str:
    if not value and source == NOT_MEASURED:
        return NOT_MEASURED_TEXT
    if not value:
        return "-"
    return escape(format_bytes(value) + (f" ({source})" if source else ""))


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"
