"""The Ray a search starts: Ray's token authentication stays on, and nothing is left behind.

Real Ray, real ports, real clients: a second process tries to join the search's Ray while the
search runs, without the token (refused) and with it (accepted, so the refusal is the token's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import ray

from autotune.search import SearchRequest, search

SPACE = "knobs:\n  batch_size: {choices: [16, 32]}\n"


def _client(address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    code = (f"import ray\nray.init(address={address!r}, logging_level='ERROR')\n"
            "print('CONNECTED', ray.cluster_resources().get('CPU'))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)


def _ray_children(before: set[int]) -> list[psutil.Process]:
    """The processes this search's Ray runs, while it runs: every descendant of this process
    (the GCS, the raylet, its agents and workers all are; another test's Ray is not) that was
    not there before the search (``before``: pids of earlier helpers of the test process)."""
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in before]


def _still_alive(procs: list[psutil.Process], wait_s: float = 15.0) -> list[psutil.Process]:
    """Those of ``procs`` still running after ``wait_s`` (orphans included: a process that
    outlived its parent is found by its pid and start time, wherever it was reparented)."""
    _, alive = psutil.wait_procs(procs, timeout=wait_s)
    return alive


@pytest.fixture
def short_tmp(monkeypatch):
    """A short temporary folder for the search's Ray (Ray's socket paths must stay under the
    108-byte limit of a Unix socket), made the process's temporary folder for the test."""
    path = Path(tempfile.mkdtemp(prefix="at_", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_searchs_ray_refuses_a_client_without_the_token(tmp_path, short_tmp):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    seen: dict[str, subprocess.CompletedProcess] = {}

    def probe(kind: str, payload: object) -> None:
        if kind != "started" or seen:
            return
        address = ray.get_runtime_context().gcs_address
        home = tmp_path / "home"  # no ~/.ray/auth_token there
        home.mkdir()
        base = {k: v for k, v in os.environ.items()
                if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                             "RAY_ADDRESS")}
        # Ray retries a refused connection 20 times, a second apart; two show the refusal.
        seen["without"] = _client(address, {**base, "HOME": str(home),
                                            "RAY_NUM_REDIS_GET_RETRIES": "2"})
        seen["with"] = _client(address, {**base, "RAY_AUTH_MODE": "token"})

    search(SearchRequest(model="tests.toy_task:make_task", space=str(space), trials=1,
                         confirm_top=0, results_dir=str(tmp_path / "run")), on_event=probe)
    refused, accepted = seen["without"], seen["with"]
    assert refused.returncode != 0 and "CONNECTED" not in refused.stdout
    assert "InvalidAuthToken" in refused.stderr, refused.stderr[-3000:]
    assert "CONNECTED" in accepted.stdout, accepted.stderr[-3000:]


def test_a_search_leaves_no_ray_directory_or_process_behind(tmp_path, short_tmp):
    """After a search that finished, and after one that failed (here: the caller's progress
    callback raised), the local Ray's processes are gone and its temporary folder too."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    seen: list[psutil.Process] = []
    names: list[str] = []
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    def watch(kind: str, payload: object) -> None:
        if kind == "started":
            assert list(short_tmp.glob("autotune_ray_*"))  # the search's Ray lives there
            seen.extend(_ray_children(before))
            names.extend(p.name() for p in seen)

    outcome = search(SearchRequest(model="tests.toy_task:make_task", space=str(space),
                                   trials=1, confirm_top=0, results_dir=str(tmp_path / "ok")),
                     on_event=watch)
    assert outcome.records and "raylet" in names
    assert not list(short_tmp.glob("autotune_ray_*"))
    assert not _still_alive(seen)

    def boom(kind: str, payload: object) -> None:
        watch(kind, payload)
        if kind == "started":
            raise RuntimeError("the caller's callback failed")

    seen.clear()
    names.clear()
    with pytest.raises(RuntimeError, match="callback failed"):
        search(SearchRequest(model="tests.toy_task:make_task", space=str(space), trials=1,
                             confirm_top=0, results_dir=str(tmp_path / "failed")),
               on_event=boom)
    assert "raylet" in names
    assert not list(short_tmp.glob("autotune_ray_*"))
    assert not _still_alive(seen)


def test_a_ctrl_c_that_a_library_swallowed_is_raised_again_at_the_next_safe_point():
    """SIGINT inside code that turns the KeyboardInterrupt into another exception (as a C++
    extension's callback can) is remembered and raised again by ``raise_if_interrupted``."""
    import os
    import signal
    import time

    from autotune.search._ray import raise_if_interrupted, sigterm_as_interrupt

    with sigterm_as_interrupt():
        raise_if_interrupted()  # nothing came: no raise
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
        except KeyboardInterrupt:
            pass  # the library swallowed it
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    raise_if_interrupted()  # cleared when the search's block ends
