"""Live progress of a real search: the status line under a real pseudo-terminal (redrawn in
place, at least once per few seconds while a trial trains, with the running trial's training
seconds and metric), plain lines when stdout is a pipe (a CI log), the exit codes 3 (no recipe
reached the target) and 130 (interrupted), and a stopped trial's learning curve in its record.

Each search is the ``autotune`` command in a subprocess on the toy loss task with a target it
cannot reach in its 3 s of training, so that every trial trains for a while and reports
intermediate results.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune import objective
from autotune.cli._exit import EXIT_INTERRUPTED, EXIT_NO_WINNER
from autotune.cli._progress import CLEAR, LINE_EVERY_ENV, StatusDisplay, pick_mode
from autotune.report import status_line
from autotune.results import TrialRecord
from autotune.search.progress import SearchProgress, TrialProgress

REPO = Path(__file__).resolve().parent.parent
UNREACHABLE = ["--model", "tests.toy_task:make_loss_task", "--target", "0.01",
               "--time-budget", "2m", "--confirm", "0"]
"""The loss falls to about 0.23 (tests/toy_task.py), never to 0.01: every trial trains its
whole ``--max-trial-time`` unless the scheduler stops it."""


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "autotune.cli", "search", *args]


@pytest.fixture(scope="module")
def pty_run(tmp_path_factory):
    """``autotune search`` with stdout, stderr and stdin on a real pseudo-terminal; every chunk
    of output with the time it arrived."""
    results = tmp_path_factory.mktemp("pty") / "run"
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "250", "TERM": "xterm"}
    # the baseline trains 6 s alone; its progress reports come 5 s apart (the throttle)
    proc = subprocess.Popen(_command(*UNREACHABLE, "--max-trial-time", "6s", "--trials", "2",
                                     "--results-dir", str(results)),
                            stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env,
                            close_fds=True)
    os.close(slave)
    chunks: list[tuple[float, str]] = []
    deadline = time.time() + 240
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append((time.time(), data.decode(errors="replace")))
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=60)
    os.close(master)
    return code, chunks, results


def _redraws(chunks: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Each status line drawn in place, with when it arrived."""
    out = []
    for at, text in chunks:
        for piece in text.split(CLEAR)[1:]:
            line = piece.split("\r")[0].split("\n")[0]
            if line.startswith("["):
                out.append((at, line))
    return out


def test_the_status_line_is_redrawn_in_place_under_a_terminal(pty_run):
    code, chunks, results = pty_run
    text = "".join(t for _, t in chunks)
    assert code == EXIT_NO_WINNER, text[-3000:]
    draws = _redraws(chunks)
    assert draws, text[-3000:]
    shown = [line for _, line in draws]
    # trials done of the total, elapsed and left of the time budget, an estimate, best so far
    assert any(re.match(r"\[1/2 done\], \S+ of 2m00s \(\S+ left\), ETA ~\S+ \| best -", s)
               for s in shown), shown[-5:]
    # the running trial: training seconds of its 3 s limit, and its current metric
    running = [s for s in shown if re.search(r"running #\d \d+\.\d/6\.0s val_loss 0\.\d{3}", s)]
    assert running, shown
    # trial lines stay whole between redraws: each starts its own line
    assert re.search(r"\r\n\[  1/2\] running \(baseline\)", text.replace(CLEAR, "\r")) or \
        "[  1/2] running (baseline)" in text


def test_the_status_updates_at_least_every_few_seconds_while_trials_train(pty_run):
    _, chunks, _ = pty_run
    draws = _redraws(chunks)
    training = [at for at, line in draws if "running #" in line]
    assert len(training) >= 5, [line for _, line in draws]
    gaps = [b - a for a, b in zip(training, training[1:])]
    print(f"status redraws while training: {len(training)}, median gap "
          f"{statistics.median(gaps):.2f}s, max {max(gaps):.2f}s")
    assert max(gaps) < 3.0, gaps  # reports alone would leave 5 s gaps


def test_no_winner_exits_3_naming_why_and_the_report(pty_run):
    code, chunks, results = pty_run
    text = "".join(t for _, t in chunks)
    assert code == EXIT_NO_WINNER == 3
    assert "autotune: no recipe reached the target" in text
    assert f"wrote {results / 'report.html'}" in text
    assert (results / "report.html").exists() and not (results / "best_recipe.yaml").exists()


def _records(results: Path) -> list[TrialRecord]:
    return [TrialRecord.from_json(json.loads(line))
            for line in (results / "trials.jsonl").read_text().splitlines()]


def _ends_at_its_last_evaluation(record: TrialRecord) -> bool:
    assert record.curve and record.train_seconds is not None
    return record.curve[-1][0] == pytest.approx(record.train_seconds, abs=1e-3) \
        and record.curve[-1][1] == pytest.approx(record.last_metric)


def test_every_trial_keeps_its_learning_curve_also_when_stopped(pty_run):
    """A stopped trial is recorded from its last intermediate report (the interrupted ones
    below too), which now carries the curve."""
    _, _, results = pty_run
    records = _records(results)
    assert all(r.curve for r in records if r.launched), [(r.status, r.curve) for r in records]
    assert all(_ends_at_its_last_evaluation(r) for r in records if r.launched)


@pytest.mark.slow  # ~30 s; the default tier covers it (ctrl-c search test, parallel contracts)
def test_without_a_terminal_the_status_is_plain_lines_and_ctrl_c_exits_130(tmp_path):
    """stdout a pipe (as in CI): no carriage returns or escape codes; ``status:`` lines at the
    rate AUTOTUNE_STATUS_EVERY asks; SIGINT ends the search with 130."""
    env = {**os.environ, LINE_EVERY_ENV: "1"}
    proc = subprocess.Popen(_command(*UNREACHABLE, "--max-trial-time", "3s", "--trials", "20",
                                     "--results-dir", str(tmp_path / "run")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=env)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("status: ") and "running #2 " in line and "/3.0s val_loss" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    text = "".join(lines) + out
    assert proc.returncode == EXIT_INTERRUPTED == 130, err[-2000:]
    assert "search interrupted" in err
    assert "\r" not in text and "\x1b" not in text
    status = [line for line in text.splitlines() if line.startswith("status: ")]
    assert re.match(r"status: \[\d+/20 done\], \S+ of 2m00s", status[0]), status
    # the trial running at Ctrl-C is recorded from its last intermediate report, curve included
    interrupted = [r for r in _records(tmp_path / "run") if r.status == objective.INTERRUPTED]
    assert interrupted and all(r.curve and _ends_at_its_last_evaluation(r)
                               for r in interrupted), interrupted


# -- the pieces, on their own -------------------------------------------------------------------


def _record(trial: int, status: str = objective.REACHED, tta: float | None = 2.0,
            started: float = 0.0, finished: float = 10.0, **kw) -> TrialRecord:
    return TrialRecord(trial=trial, status=status, tta_seconds=tta, started_at=started,
                       finished_at=finished, score=tta or 9.0, **kw)


def test_eta_is_trials_left_times_a_trials_wall_time_within_the_budget():
    progress = SearchProgress(total=5, time_budget_s=600.0, start=0.0)
    assert progress.snapshot(now=0.0).eta_s == 600.0  # nothing measured: the budget
    progress.on_event("started", _record(1))
    progress.on_event("finished", _record(1, started=0.0, finished=10.0))
    progress.on_event("started", _record(2, started=10.0))
    snap = progress.snapshot(now=14.0)
    # 3 trials queued x 10 s, and 6 s left of the running one's expected 10 s
    assert snap.eta_s == pytest.approx(36.0) and snap.remaining_s == pytest.approx(586.0)
    assert snap.done == 1 and snap.best is not None and snap.best.record.trial == 1
    tight = SearchProgress(total=50, time_budget_s=60.0, start=0.0)
    tight.on_event("finished", _record(1, started=0.0, finished=10.0))
    assert tight.snapshot(now=20.0).eta_s == pytest.approx(40.0)  # the budget bounds it


def test_status_line_shows_the_running_trials_progress():
    progress = SearchProgress(total=4, time_budget_s=120.0, start=0.0)
    progress.on_event("finished", _record(1, tta=1.5))
    progress.on_event("started", _record(2, status=objective.RUNNING, tta=None, started=5.0))
    progress.on_event("progress", TrialProgress(trial=2, train_seconds=1.25,
                                                max_train_seconds=3.0, last_metric=0.4321))
    line = status_line(progress.snapshot(now=10.0), "val_loss")
    assert line.startswith("[1/4 done], 10.0s of 2m00s (1m50s left), ETA ~")
    assert "| best 1.5s (#1) | running #2 1.2/3.0s val_loss 0.432" in line


class _Tty:
    """A text stream that says it is a terminal and keeps what is written."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return True


def test_a_line_clears_the_status_then_redraws_it():
    stream = _Tty()
    assert pick_mode(False, False, stream) == "terminal"  # type: ignore[arg-type]
    assert pick_mode(False, True, stream) == "lines"  # type: ignore[arg-type]
    assert pick_mode(True, False, stream) == "quiet"  # type: ignore[arg-type]
    display = StatusDisplay(lambda: "[0/1 done]", "terminal", out=stream, redraw_s=60)
    display.start()
    display.line("[  1/1] running (baseline)")
    display.stop()
    assert "".join(stream.parts) == (f"{CLEAR}[0/1 done]{CLEAR}[  1/1] running (baseline)\n"
                                     f"{CLEAR}[0/1 done]{CLEAR}")
