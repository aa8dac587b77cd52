"""Shared fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autotune.results import TrialRecord
from autotune.tasks import Task
from tests.toy_task import make_toy_task

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def toy_task() -> Task:
    return make_toy_task()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh, private cache directory for the whole module (its first task load fills it)."""
    path = tmp_path_factory.mktemp("autotune_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOTUNE_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def tracked_run(tmp_path_factory: pytest.TempPathFactory):
    """One ``autotune search -q`` on the toy loss task with every ``--logger``, shared by
    ``tests/test_tracking.py`` and ``tests/test_provenance.py`` (once per session: defined here,
    not imported into each module, which would run it once per module). Screening is off: the
    subject is what the trials log. Returns ``(completed process, results dir, records,
    wall seconds)``."""
    results = tmp_path_factory.mktemp("tracked") / "run"
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "search", "-q", "--model",
         "tests.toy_task:make_loss_task", "--task-option", "eval_every_seconds=0.01",
         "--target", "0.235", "--max-trial-time", "3s",
         "--trials", "3", "--time-budget", "2m", "--confirm", "0", "--no-screen",
         "--results-dir", str(results), "--logger", "tensorboard", "--logger", "csv",
         "--logger", "mlflow"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    records = [TrialRecord.from_json(json.loads(line))
               for line in (results / "trials.jsonl").read_text().splitlines()] \
        if (results / "trials.jsonl").exists() else []
    return done, results, records, time.time() - start
