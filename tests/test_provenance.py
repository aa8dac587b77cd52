"""Provenance: ``search.yaml`` has the versions, the git state of the task's module and the
environment ``torch.utils.collect_env`` gives; every record has versions, host and device name.
The search is ``tests/test_tracking.py``'s (one search for both modules); the git cases run real
``git`` on temporary checkouts."""

from __future__ import annotations

import importlib.metadata
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from autotune.search.provenance import (
    device_name,
    environment,
    git_state,
    library_versions,
    task_source,
)
from tests.test_tracking import REPO

pytestmark = pytest.mark.usefixtures("tracked_run")


def _git(directory, *args: str) -> str:
    return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_search_yaml_has_versions_the_task_commit_and_the_environment(tracked_run):
    _, results, _, _ = tracked_run
    provenance = yaml.safe_load((results / "search.yaml").read_text())["provenance"]
    versions = provenance["versions"]
    for name in ("torch", "ray", "optuna", "transformers", "autotune"):
        assert versions[name] == importlib.metadata.version(name)
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    # tests/toy_task.py lives in this checkout
    assert provenance["task_git"]["commit"] == _git(REPO, "rev-parse", "HEAD")
    assert provenance["task_git"]["path"] == str(REPO)
    assert isinstance(provenance["task_git"]["dirty"], bool)
    env = provenance["environment"]
    assert env["torch"] == torch.__version__ and env["cpu"] and env["os"]
    assert env["cuda_available"] == torch.cuda.is_available()
    assert provenance["host"] == socket.gethostname()


def test_every_record_says_what_produced_it(tracked_run):
    _, _, records, _ = tracked_run
    assert records
    for record in records:
        assert record.provenance == {"versions": library_versions(),
                                     "host": socket.gethostname(),
                                     "device_name": device_name("cpu")}


def test_git_state_commit_and_dirty_flag_of_a_real_checkout(tmp_path):
    repo = tmp_path / "work"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "my_task.py").write_text("def make():\n    return None\n")
    _git(repo, "add", "my_task.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "task")
    state = git_state(repo)
    assert state == {"commit": _git(repo, "rev-parse", "HEAD"), "dirty": False,
                     "path": str(repo.resolve())}
    (repo / "my_task.py").write_text("def make():\n    return 1\n")
    assert git_state(repo)["dirty"] is True
    sys.path.insert(0, str(repo))
    try:
        assert task_source("my_task:make") == repo.resolve()
    finally:
        sys.path.remove(str(repo))


def test_no_git_state_outside_a_checkout_or_for_a_built_in_task(tmp_path):
    (tmp_path / "loose_task.py").write_text("def make():\n    return None\n")
    sys.path.insert(0, str(tmp_path))
    try:
        source = task_source("loose_task:make")
    finally:
        sys.path.remove(str(tmp_path))
    assert source == tmp_path.resolve() and git_state(source) is None
    assert task_source("bert") is None and task_source("no_such_module_xyz:make") is None


def test_environment_is_collected_once():
    first = environment()
    assert environment() is first and "cpu" in first
