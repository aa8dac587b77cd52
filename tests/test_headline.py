"""The headline command as a user types it (slow tier: a real search of a built-in task)."""

import json
import subprocess
import sys

import pytest
import yaml


@pytest.mark.slow
def test_mnist_search_from_the_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "search", "--model", "mnist", "--budget", "16GB",
         "--trials", "6", "--time-budget", "3m", "--results-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "speedup" in proc.stdout and "(baseline)" in proc.stdout
    doc = yaml.safe_load((tmp_path / "run" / "best_recipe.yaml").read_text())
    assert doc["speedup"] >= 1.0
    records = [json.loads(x) for x in (tmp_path / "run" / "trials.jsonl").read_text().splitlines()]
    assert len([r for r in records if r["rerun_of"] is None]) == 6
    assert doc["measured"]["tta_is_median_of"] == 3  # confirmed with two more seeds
