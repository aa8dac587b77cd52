"""Interrupting a real search (SIGTERM, as a scheduler or `kill` would) and resuming it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest

from autotune import objective
from autotune.cli import main
from autotune.results import RunDirectory, TrialRecord

SPACE = """\
knobs:
  batch_size: {choices: [16, 32, 64]}
  lr: {low: 1.0e-3, high: 3.0e-2, log: true}
"""


def _records(results):
    return [json.loads(line) for line in (results / "trials.jsonl").read_text().splitlines()]


@pytest.mark.slow  # ~35-60 s: kept out of the default tier (under 15 min)
def test_sigterm_then_resume_runs_only_what_is_left(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    results = tmp_path / "results"
    ray_tmp = Path(tempfile.mkdtemp(prefix="at_", dir="/tmp"))  # the search's Ray goes here
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "search", "--model", "tests.toy_task:make_task",
         "--space", str(space), "--target", "1.01", "--trials", "5", "--max-trial-time", "2s",
         "--results-dir", str(results)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(ray_tmp)},
    )
    for line in proc.stdout:
        if line.startswith("[  3/5] running"):
            break
    import time

    time.sleep(1.0)  # trial 3 trains now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert f"autotune search --resume {results}" in err
    assert not list(ray_tmp.glob("autotune_ray_*"))  # SIGTERM too removes the Ray folder
    shutil.rmtree(ray_tmp)
    before = _records(results)
    assert [r["status"] for r in before] == [objective.NOT_REACHED] * 2 + [objective.INTERRUPTED]
    interrupted = before[2]

    code = main(["search", "--resume", str(results)])
    out = capsys.readouterr().out
    assert code == 3  # target 1.01 is unreachable: every trial is measured, none reaches it
    assert "resuming the search" in out and "2 of 5 trials finished" in out
    after = _records(results)
    new = after[len(before):]
    # finished trials were not run again; the interrupted one ran again; 5 finished in all
    assert len(new) == 3
    assert [r["trial"] for r in new] == [3, 4, 5]
    assert new[0]["params"] == interrupted["params"]
    assert all(r["status"] == objective.NOT_REACHED for r in new)
    first_ids = {r["trial_id"] for r in before[:2]}
    assert not first_ids & {r["trial_id"] for r in new}
    sessions = RunDirectory(results).sessions()
    assert len(sessions) == 2 and all("ended_at" in s for s in sessions)

    # The stored study was reloaded, not rebuilt: the interrupted proposal is kept as failed,
    # the five finished ones complete, each with its recipe.
    study = optuna.load_study(study_name="autotune", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(results / "study.journal"))))
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 5
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert states[interrupted["study_trial"]] == optuna.trial.TrialState.FAIL

    # a resumed search that is already complete runs nothing more
    assert main(["search", "--resume", str(results)]) == 3  # still no winner
    assert len(_records(results)) == len(after)


def test_resume_of_a_directory_without_a_search_says_so(tmp_path, capsys):
    assert main(["search", "--resume", str(tmp_path)]) == 2
    assert "settings.json" in capsys.readouterr().err


def test_resumed_time_budget_counts_earlier_runs(tmp_path):
    """Each earlier run counts from its start to its end, or, for a run whose driver died, to
    the last trial that ended in it."""
    run = RunDirectory(tmp_path)
    run.create()
    run.save_settings({}, "knobs: {}\n")
    run.begin_session()
    run.end_session()
    run.begin_session()  # this driver died: no end
    sessions = run.sessions()
    first, second = sessions
    first["started_at"], first["ended_at"] = 1000.0, 1100.0
    second["started_at"] = 2000.0
    (tmp_path / "settings.json").write_text(json.dumps({"settings": {}, "sessions": sessions}))
    records = [TrialRecord(trial=1, status="reached", finished_at=1050.0),
               TrialRecord(trial=2, status="reached", finished_at=2030.0),
               TrialRecord(trial=3, status="reached", finished_at=2045.0)]
    assert run.spent_seconds(records) == pytest.approx(100.0 + 45.0)
    assert run.spent_seconds([]) == pytest.approx(100.0)
