"""Typed trial records and the run directory: round trip, versions, torn lines, the lock, paths."""

import dataclasses
import json
import subprocess
import sys

import pytest

from autotune.errors import UserError
from autotune.results import (
    MEASUREMENTS,
    RecordFormatError,
    RunDirectory,
    TrialRecord,
    check_writable,
)
from autotune.train import TrialResult


def _record(**changes):
    base = TrialRecord(trial=3, status="reached", score=1.5, recipe={"lr": 0.01},
                       params={"lr": 0.01}, tta_seconds=1.5, curve=[[0.5, 0.4], [1.5, 0.95]],
                       memory_breakdown={"total": 10})
    return dataclasses.replace(base, **changes)


def test_a_record_round_trips_through_json_with_its_schema():
    record = _record()
    data = json.loads(json.dumps(record.to_json()))
    assert data["schema"] == 1
    assert TrialRecord.from_json(data) == record


def test_nan_and_inf_are_written_as_null():
    data = _record(score=float("nan"), best_metric=float("inf")).to_json()
    assert data["score"] is None and data["best_metric"] is None
    json.dumps(data, allow_nan=False)


def test_an_unknown_or_missing_schema_is_refused_clearly():
    data = _record().to_json()
    with pytest.raises(RecordFormatError, match="schema 99.*reads schema 1"):
        TrialRecord.from_json({**data, "schema": 99}, source="x.jsonl:1")
    data.pop("schema")
    with pytest.raises(RecordFormatError, match="no schema version"):
        TrialRecord.from_json(data)


def test_every_measurement_of_a_trial_result_has_a_record_field():
    """A field added to TrialResult without a place in TrialRecord would be lost."""
    result_fields = {f.name for f in dataclasses.fields(TrialResult)} - {"status", "score",
                                                                         "message"}
    assert result_fields <= set(MEASUREMENTS), result_fields - set(MEASUREMENTS)
    result = TrialResult(status="reached", score=2.0, tta_seconds=2.0, steps=7,
                         curve=[(1.0, 0.5), (2.0, 0.95)])
    record = TrialRecord(trial=1, status="reached").with_measurements(result.to_dict())
    assert record.steps == 7 and record.curve == [[1.0, 0.5], [2.0, 0.95]]


def test_appends_survive_a_torn_last_line(tmp_path):
    run = RunDirectory(tmp_path)
    run.create()
    run.append(_record(trial=1))
    run.append(_record(trial=2))
    with run.trials_path.open("a") as f:
        f.write('{"schema": 1, "trial": 3, "sta')  # a write cut short
    warnings = []
    records = run.records(warnings.append)
    assert [r.trial for r in records] == [1, 2]
    assert len(warnings) == 1 and "torn" in warnings[0] and ":3" in warnings[0]


def test_a_killed_writer_leaves_only_whole_lines(tmp_path):
    """Records are appended by one write each: a process killed while appending in a loop
    leaves a file of whole records."""
    code = (
        "import sys, dataclasses\n"
        "from autotune.results import RunDirectory, TrialRecord\n"
        "run = RunDirectory(sys.argv[1])\n"
        "big = {'k%d' % i: 'v' * 50 for i in range(200)}\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        "    run.append(TrialRecord(trial=i, status='reached', params=big))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    run = RunDirectory(tmp_path)
    while not run.trials_path.exists() or run.trials_path.stat().st_size < 2_000_000:
        pass
    proc.kill()
    proc.wait()
    warnings = []
    records = run.records(warnings.append)
    assert len(records) > 10 and not warnings
    assert [r.trial for r in records] == list(range(1, len(records) + 1))


def test_the_lock_refuses_a_second_holder_and_is_released(tmp_path):
    run = RunDirectory(tmp_path)
    with run.locked():
        with pytest.raises(UserError, match=r"another search is running .*pid \d+"):
            with RunDirectory(tmp_path).locked():
                pass
    with RunDirectory(tmp_path).locked():  # released when the holder ended
        pass


def test_paths_below_a_file_or_of_the_wrong_kind_are_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_writable(blocker / "deep" / "best.yaml", "--output", is_dir=False)
    with pytest.raises(UserError, match="exists and is a file"):
        check_writable(blocker, "--results-dir", is_dir=True)
    with pytest.raises(UserError, match="exists and is a folder"):
        check_writable(tmp_path, "--output", is_dir=False)
    check_writable(tmp_path / "new" / "deeper" / "best.yaml", "--output", is_dir=False)
