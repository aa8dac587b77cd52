"""A real two-node Ray cluster on this machine: a search through ``--address`` spreads its
trials over both nodes, and survives the loss of one node in the middle of a trial.

The cluster runs with Ray's token authentication, as the README tells users to start one: a
token of its own (``RAY_AUTH_TOKEN_PATH``), ``RAY_AUTH_MODE=token`` for the nodes and the
driver. A driver without the token, or with a wrong one, is refused with autotune's message.

Both nodes are real ``ray start`` processes (each with its own CPU count, object store and
node-manager port); losing a node is faked the way a machine loss looks to Ray: every process of
that node is killed (SIGKILL) by PID. The cluster is stopped whatever the outcome, by killing
exactly its own processes (``ray stop`` would kill every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from autotune import objective

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
SPACE = """\
knobs:
  batch_size: {choices: [16, 32, 64]}
  lr: {low: 1.0e-3, high: 3.0e-2, log: true}
"""
# Node death is noticed by the head's health checks: every 0.5 s, dead after 3 misses.
SYSTEM_CONFIG = json.dumps({"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                            "health_check_initial_delay_ms": 0})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A head node and a second node, each started with ``ray start`` and declaring ``cpus``
    CPUs and ``gpus`` GPUs (Ray schedules declared GPUs whether or not CUDA is there:
    ``tests/test_gpu_placement.py``)."""

    def __init__(self, cpus: int = 1, gpus: int = 0) -> None:
        self.cpus, self.gpus = cpus, gpus
        self.temp = tempfile.mkdtemp(prefix="at_cluster_", dir="/tmp")
        self.port = _free_port()
        self.second_port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.token_path = Path(self.temp) / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.env = {**os.environ, "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN_PATH": str(self.token_path), "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
            self.env.pop(name, None)

    def start(self) -> None:
        common = ["--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}",
                  f"--num-gpus={self.gpus}",
                  f"--object-store-memory={100 * 2**20}", "--disable-usage-stats"]
        self._ray(["start", "--head", f"--port={self.port}", f"--temp-dir={self.temp}",
                   "--include-dashboard=false", f"--system-config={SYSTEM_CONFIG}", *common])
        self._ray(["start", f"--address={self.address}",
                   f"--node-manager-port={self.second_port}", *common])
        deadline = time.time() + 60
        while self.alive_nodes() < 2:
            if time.time() > deadline:
                raise RuntimeError("the second node did not join the cluster")
            time.sleep(0.5)

    def _ray(self, args: list[str]) -> None:
        done = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")

    def alive_nodes(self) -> int:
        code = (f"import ray, json; ray.init(address={self.address!r}, logging_level='ERROR'); "
                "print(json.dumps(sum(n['Alive'] for n in ray.nodes())))")
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True,
                             text=True, timeout=60)
        try:
            return int(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return 0

    def _processes(self) -> list[psutil.Process]:
        """Every process of this cluster: those that name its temp dir or port, and their
        children (the workers)."""
        marks = (self.temp, f":{self.port}", f"={self.port}")
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if any(m in cmd for m in marks) and p.pid != os.getpid():
                found[p.pid] = p
        for p in list(found.values()):
            try:
                for child in p.children(recursive=True):
                    found.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                pass
        return [p for p in found.values() if p.pid != os.getpid()]

    def kill_second_node(self) -> int:
        """SIGKILL the second node's raylet and everything it started (its workers and
        agents): what a machine loss looks like to the head."""
        raylets = [p for p in psutil.process_iter(["cmdline"])
                   if f"--node_manager_port={self.second_port}" in
                   " ".join(p.info["cmdline"] or [])]
        victims = []
        for raylet in raylets:
            victims += [raylet, *raylet.children(recursive=True)]
        for p in victims:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        return len(victims)

    def stop(self) -> None:
        """Kill every process of the cluster, then remove its temp dir (the guide's rule: a
        Ray temp dir of our own, removed; 41 were left in /tmp in one day before this)."""
        procs = self._processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture()
def cluster():
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _search(cluster: Cluster, tmp_path: Path, *extra: str) -> subprocess.Popen:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "search", "--model", "tests.toy_task:make_task",
         "--space", str(space), "--address", cluster.address,
         "--results-dir", str(tmp_path / "results"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cluster.env,
        cwd=str(ROOT),
    )


def _records(tmp_path: Path) -> list[dict]:
    path = tmp_path / "results" / "trials.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_trials_spread_over_both_nodes(cluster, tmp_path):
    proc = _search(cluster, tmp_path, "--trials", "4", "--max-trial-time", "2s",
                   "--target", "1.01")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 3, out[-3000:]  # target unreachable: every trial ran to its limit
    records = _records(tmp_path)
    assert len(records) == 4
    assert all(r["status"] == objective.NOT_REACHED for r in records), out[-3000:]
    nodes = {r["node_id"] for r in records}
    assert len(nodes) == 2, nodes  # one CPU per node, one CPU per trial: both nodes worked


@pytest.mark.slow  # ~35-60 s: kept out of the default tier (under 15 min)
def test_losing_a_node_mid_trial_fails_that_trial_and_the_search_finishes(cluster, tmp_path):
    proc = _search(cluster, tmp_path, "--trials", "5", "--max-trial-time", "6s",
                   "--target", "1.01")
    running = 0
    lines = []
    for line in proc.stdout:
        lines.append(line)
        running += " running" in line
        if running == 2:  # two trials train at once, one on each node
            break
    time.sleep(2.0)
    assert cluster.kill_second_node() > 0
    out, _ = proc.communicate(timeout=300)
    out = "".join(lines) + out
    assert proc.returncode == 3, out[-3000:]
    records = _records(tmp_path)
    assert len(records) == 5, out[-3000:]  # the search went on to its last trial
    failed = [r for r in records if r["status"] == objective.ERROR]
    assert len(failed) == 1, [(r["status"], r["message"]) for r in records]
    assert failed[0]["message"], failed[0]
    assert sum(r["status"] == objective.NOT_REACHED for r in records) == 4


@pytest.mark.slow  # ~33 s; test_gpu_placement's spread test puts two workers on two nodes too
def test_a_parallel_trials_workers_are_placed_on_both_nodes(cluster, tmp_path):
    """``--placement spread``: Ray puts the two ddp workers of a trial on different machines,
    and they train together over gloo. The baseline runs single, the warm start ddp."""
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  parallelism: {choices: [single, ddp]}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "search", "--model", "tests.toy_task:make_task",
         "--task-option", 'suggest={"parallelism": "ddp", "workers": 2}', "--task-warm-start",
         "--space", str(space), "--address", cluster.address, "--workers-per-trial", "2",
         "--placement", "spread", "--trials", "2", "--confirm", "0", "--target", "1.01",
         "--max-trial-time", "1s", "--results-dir", str(tmp_path / "results")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cluster.env,
        cwd=str(ROOT),
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 3, out[-3000:]  # target unreachable: trials train to their end
    records = _records(tmp_path)
    assert len(records) == 2
    assert all(r["status"] in (objective.NOT_REACHED, objective.STOPPED) for r in records), \
        [(r["status"], r["message"]) for r in records]
    parallel = [r for r in records if r["recipe"]["parallelism"] == "ddp"]
    assert len(parallel) == 1
    for r in parallel:
        assert r["recipe"]["workers"] == 2
        assert len(set(r["worker_nodes"])) == 2, r["worker_nodes"]
        assert r["steps"] > 0 and r["examples"] == r["steps"] * r["recipe"]["batch_size"] * 2


def test_a_driver_without_the_clusters_token_is_refused_with_the_fix(cluster, tmp_path):
    """No token (nothing in the environment, no ~/.ray/auth_token), then a wrong one: the
    cluster refuses, and autotune says how to pass the token instead of a traceback."""
    env = {k: v for k, v in cluster.env.items()
           if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    home = tmp_path / "home"
    home.mkdir()
    # Ray retries a refused connection 20 times, a second apart; two show the refusal.
    env.update(HOME=str(home), RAY_NUM_REDIS_GET_RETRIES="2")
    wrong = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    for case in (env, wrong):
        proc = subprocess.run(
            [sys.executable, "-m", "autotune.cli", "search", "--model",
             "tests.toy_task:make_task", "--space", str(space), "--address", cluster.address,
             "--trials", "1",
             "--results-dir", str(tmp_path / f"run{len(case)}")],
            capture_output=True, text=True, env=case, cwd=str(ROOT), timeout=180)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "refused autotune: its token authentication" in proc.stderr, proc.stderr[-3000:]
        assert "RAY_AUTH_MODE=token" in proc.stderr and "Traceback" not in proc.stderr

