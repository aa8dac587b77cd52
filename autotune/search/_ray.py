"""Ray start-up, and what each trial holds: resources, placement, concurrency.

``ray_session`` connects to a cluster (``--address`` or ``RAY_ADDRESS``) or starts a local Ray
for the search, and shuts down what it started and removes its temporary directory whatever
the outcome (success, error, Ctrl-C, SIGTERM).

Security: autotune keeps Ray's defaults. A local ``ray.init()`` of Ray 2.60 turns on token
authentication (the token in ``~/.ray/auth_token``, made on first use), so every one of its
gRPC servers refuses a client without the token; the dashboard is not started. Ray 2.60 still
binds those servers to all interfaces (``--node-ip-address=127.0.0.1`` does not change that),
so the token is what keeps others out. A cluster with token authentication needs the token and
``RAY_AUTH_MODE=token`` on the driver (Ray enables it for an explicit address only then);
``_connect`` names that fix when the cluster refuses autotune.

What a trial holds is checked against the nodes alive when the search starts
(``placement_problem``): a trial, or a multi-worker recipe's workers, that no node (or no set of
nodes) can hold would wait in Ray's queue for ever, so it is refused up front, naming what is
missing. A cluster whose autoscaler would add bigger nodes on demand is not foreseen.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray.exceptions import AuthenticationError, RayError
from ray.tune import PlacementGroupFactory

from autotune.errors import UserError
from autotune.search._workers import STRATEGIES, placement

SIMULATE_GPUS_ENV = "AUTOTUNE_SIMULATE_GPUS"
"""For tests of placement only: see ``simulating_gpus``."""


def simulating_gpus() -> bool:
    """Whether ``AUTOTUNE_SIMULATE_GPUS=1`` is set in the driver: for tests of placement only.

    The search then holds GPUs exactly as on a GPU cluster (one per trial, one per worker of a
    multi-worker trial, as many trials at once as the declared GPUs allow), but every trial and
    every worker trains on the CPU (gloo for a process group). Nodes started with
    ``ray start --num-gpus 4`` on a machine without CUDA declare GPUs that Ray schedules like
    real ones, so a CPU machine can test how trials are laid out over a GPU cluster. Never set
    it on a real GPU cluster: its GPUs would be held and left idle."""
    return os.environ.get(SIMULATE_GPUS_ENV) == "1"


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray for the length of a search (see the module docstring)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C reaches autotune, which records the trials in flight and says where results are.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # A trial that fails before its first evaluation has no metric to report; the scheduler
    # then skips that result instead of Tune failing the search.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if ray.is_initialized():
        yield
        return
    # Trial processes import user tasks (package.module:function) the way the driver does:
    # from the directory the command runs in (on a cluster: the same path on every node).
    paths = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    address = address or os.environ.get("RAY_ADDRESS")
    temp_dir = None
    try:
        if address:
            _connect(address)
        else:
            temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX)
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     log_to_driver=False, _temp_dir=temp_dir, configure_logging=True,
                     logging_level="ERROR")
        # After ray.init, which installs its own SIGTERM handler in the driver.
        with sigterm_as_interrupt():
            yield
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if temp_dir is not None:
            remove_dir(temp_dir)


TEMP_PREFIX = "autotune_ray_"
"""Prefix of the temporary directory of a local Ray (in ``tempfile.gettempdir()``)."""


def remove_dir(path: str, wait_s: float = 10.0) -> None:
    """Remove ``path``; Ray's processes may still write their last logs there for a moment
    after ``ray.shutdown()``, so try again until it is gone (or ``wait_s`` has passed)."""
    deadline = time.monotonic() + wait_s
    while True:
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path) or time.monotonic() > deadline:
            return
        time.sleep(0.2)


_INTERRUPTED = threading.Event()
"""Set by Ctrl-C or SIGTERM while a search runs (``sigterm_as_interrupt``)."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM (a job scheduler, ``kill``) end the search while the block
    runs, so the running trials are recorded and the search can be resumed. The one place
    autotune handles a signal (only on the main thread, where handlers can be set).

    The signal raises ``KeyboardInterrupt`` where the main thread is, as Python's own handler
    does, and is also remembered: a ``KeyboardInterrupt`` raised inside a library that turns it
    into another exception and goes on (a C++ extension's callback, a broad ``except``) would
    otherwise be lost, and the search would run to its end. ``raise_if_interrupted``, called at
    the search's own safe points (each trial event, each proposal, each screening result),
    raises it again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    _INTERRUPTED.clear()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _INTERRUPTED.clear()


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C or SIGTERM came during the search (see
    ``sigterm_as_interrupt``)."""
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


def _connect(address: str) -> None:
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    except (ConnectionError, RuntimeError, ValueError, RayError) as exc:
        if _refused_for_token(exc):
            raise UserError(
                f"the Ray cluster at {address!r} refused autotune: its token authentication "
                "needs the cluster's token, which autotune did not send or which is wrong. "
                "Run with RAY_AUTH_MODE=token and the token in RAY_AUTH_TOKEN, in the file "
                "RAY_AUTH_TOKEN_PATH names, or in ~/.ray/auth_token (`ray get-auth-token` on "
                "the head node prints it); see docs/cluster.md."
            ) from None
        raise UserError(
            f"cannot connect to the Ray cluster at {address!r}: {str(exc).splitlines()[0]}. "
            "Start one with `ray start --head` (see docs/cluster.md), or leave out --address "
            "(and RAY_ADDRESS) to run on this machine."
        ) from None


def _refused_for_token(exc: BaseException | None) -> bool:
    """Whether Ray's error (or one it was raised from) is its token authentication refusing
    the connection."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, AuthenticationError) or "InvalidAuthToken" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def trial_resources(device: str | None, cpus_per_trial: float | None,
                    gpus_per_trial: float | None) -> dict[str, float]:
    """What one trial holds. Where there are GPUs: one GPU and that GPU's share of its node's
    CPUs, so trials run one per GPU. On CPUs: a whole node (the smallest alive node, so a trial
    fits on any), so trials do not share cores and their timings are not distorted by each
    other. ``cpus_per_trial``/``gpus_per_trial`` override either."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    gpu_nodes = [n for n in nodes if n.get("GPU", 0) > 0]
    use_gpu = bool(gpu_nodes) and device != "cpu"
    gpus = gpus_per_trial if gpus_per_trial is not None else (1 if use_gpu else 0)
    if cpus_per_trial is not None:
        cpus = cpus_per_trial
    elif gpus:
        cpus = max(1, min(int(n.get("CPU", 0) // n["GPU"]) for n in gpu_nodes))
    else:
        cpus = max(1, min((int(n["CPU"]) for n in nodes if n.get("CPU", 0) >= 1), default=1))
    out: dict[str, float] = {"cpu": cpus}
    if gpus:
        out["gpu"] = gpus
    return out


def resources_for(base: dict[str, float], workers: int, strategy: str
                  ) -> dict[str, float] | PlacementGroupFactory:
    """A single-worker trial holds ``base``; a multi-worker trial a placement group with a
    bundle per worker (``autotune.search._workers.placement``)."""
    if workers <= 1:
        return base
    return placement(workers, base["cpu"], bool(base.get("gpu")), strategy)


def max_concurrent(base: dict[str, float], cap: int | None) -> int:
    """As many trials as the cluster's nodes fit with ``base`` each (at most ``cap``)."""
    fit = sum(_fits(node, _ray_names(base)) for node in alive_nodes())
    fit = max(1, fit)
    return min(fit, cap) if cap else fit


def alive_nodes() -> list[dict[str, float]]:
    """The total resources of each alive node of the cluster (``CPU``, ``GPU``, ...)."""
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def cluster_summary(nodes: list[dict[str, float]]) -> dict[str, Any]:
    """``{"nodes", "CPU", "GPU"}``: the cluster's size, for messages and the search's
    ``resources`` event."""
    return {"nodes": len(nodes), "CPU": sum(n.get("CPU", 0.0) for n in nodes),
            "GPU": sum(n.get("GPU", 0.0) for n in nodes)}


def placement_problem(base: dict[str, float], workers: int, strategy: str,
                      nodes: list[dict[str, float]]) -> str | None:
    """Why a trial of ``workers`` workers (``resources_for(base, workers, strategy)``) can
    never be placed on ``nodes`` (each node's total resources), or None when it can.

    Ray would queue such a trial for ever (Tune only warns after a minute), so the search asks
    first. A worker's bundle must fit one node; ``PACK`` may spill bundles over several
    nodes (all of them together must hold the workers), ``STRICT_SPREAD`` needs a different
    node for each worker. The bundles of one trial are alike, so counting how many fit each
    node is exact."""
    if workers <= 1:
        need, what = _ray_names(base), "a trial"
    else:
        group = resources_for(base, workers, strategy)
        need = next(b for b in group.bundles if b)
        what = f"each of its {workers} workers"
    per_node = [_fits(node, need) for node in nodes]
    spread = STRATEGIES[strategy] == "STRICT_SPREAD" and workers > 1
    placed = sum(1 for n in per_node if n) if spread else sum(per_node)
    if placed >= workers:
        return None
    largest = ", ".join(f"{_show(max((n.get(k, 0.0) for n in nodes), default=0.0))} {k}"
                        for k in need)
    size = cluster_summary(nodes)
    cluster = (f"the cluster has {size['nodes']} alive node(s), {_show(size['GPU'])} GPU and "
               f"{_show(size['CPU'])} CPU in all, at most {largest} on one node")
    needs = " and ".join(f"{_show(v)} {k}" for k, v in need.items())
    if workers <= 1:
        missing = [k for k, v in need.items() if all(n.get(k, 0.0) < v for n in nodes)]
        short = f"enough {' and '.join(missing)}" if missing else "all of it"
        return (f"{what} needs {needs} on one node, but no node has {short} ({cluster}); "
                "lower --gpus-per-trial/--cpus-per-trial, or add bigger nodes")
    if spread:
        return (f"{what} needs {needs}, each on a different node (--placement spread), but "
                f"only {placed} node(s) can hold one ({cluster}); use --placement pack, fewer "
                f"--workers-per-trial (at most {placed}), or add nodes")
    missing = [k for k, v in need.items() if sum(n.get(k, 0.0) for n in nodes) < v * workers]
    short = " and ".join(missing) or "room on the nodes that fit a worker"
    total = " and ".join(f"{_show(workers * v)} {k}" for k, v in need.items())
    fix = f"lower --workers-per-trial (at most {placed})" if placed else \
        "lower --gpus-per-trial/--cpus-per-trial"
    return (f"{what} needs {needs}, {total} in all, but the cluster holds only {placed} such "
            f"worker(s): not enough {short} ({cluster}); {fix}, or add nodes")


def _ray_names(base: dict[str, float]) -> dict[str, float]:
    """``trial_resources``' ``{"cpu", "gpu"}`` in Ray's resource names, zeros left out."""
    return {k.upper(): float(v) for k, v in base.items() if v}


def _fits(node: dict[str, float], need: dict[str, float]) -> int:
    """How many bundles ``need`` fit a node of ``node``'s total resources."""
    counts = [int(node.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    return min(counts) if counts else 10**6


def _show(value: float) -> str:
    return f"{value:g}"

