"""The workers of a multi-worker trial as Ray actors that Ray places, on one machine or several.

A data-parallel or sharded trial (``recipe.workers > 1``) is one Ray Tune trial that holds a
placement group of one bundle per worker (its CPUs, and one GPU on GPU machines); the trial's
own process takes no resources (Tune's empty head bundle: it only forwards progress) and runs
beside worker 0. Tune reserves the group before the trial starts and frees it when the trial
ends or is stopped early. Each worker is an actor scheduled into its bundle; the actors are
owned by the trial's process, so an early-stopped or failed trial takes its workers with it
and leaves nothing reserved.

Bundles are placed with ``PACK`` by default (one machine when they fit there, spilling to
others when not) or ``STRICT_SPREAD`` (``--placement spread``: one worker per machine).
Worker 0's machine hosts the rendezvous (``MASTER_ADDR`` is its node address, the port one it
found free); the group is gloo on CPUs and NCCL on GPUs (gloo on the CPU, whatever the bundles
hold, when the trial's device is ``cpu``: ``autotune.search._ray.simulating_gpus``). Each
worker's machine and the GPU ids Ray gave it are in the trial's record. Every worker runs
``autotune.train.distributed.worker_main``, the same code as the one-machine launcher.

A worker that dies (crash, OOM killer, machine lost) surfaces as Ray's ``ActorDiedError``:
the other workers are killed at once (instead of waiting in a collective) and the trial ends
as failed, naming the worker, its machine and Ray's reason.

Ray Train's ``TorchTrainer`` does the same placement, but nested inside a Tune trial its
controller's placement group was not freed when the scheduler stopped the trial (the cleaner
asks the state API, which a dashboard-less local Ray lacks), and the search hung; plain actors
in the trial's own placement group have no such leftover.
"""

from __future__ import annotations

import collections
import dataclasses
import socket
import threading
from typing import Any

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError
from ray.tune import PlacementGroupFactory
from ray.util import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from autotune import objective
from autotune.recipe import Recipe
from autotune.tasks import Task
from autotune.train import (
    TrialResult,
    WorkerFailed,
    check_launch,
    result_from_final,
    worker_main,
)

POLL_SECONDS = 0.5


STRATEGIES = {"PACK": "PACK", "SPREAD": "STRICT_SPREAD"}


def placement(workers: int, trial_cpus: float, gpus: bool, strategy: str = "PACK") -> Any:
    """The placement group of a trial with ``workers`` workers.

    On GPUs each worker gets one GPU and ``trial_cpus`` CPUs; on CPUs the workers share
    ``trial_cpus`` (a node's CPUs by default) when packed, or each get them when spread over
    machines. The empty first bundle is the trial's own process."""
    if gpus:
        worker = {"CPU": float(trial_cpus), "GPU": 1.0}
    elif strategy == "SPREAD":
        worker = {"CPU": float(trial_cpus)}
    else:
        worker = {"CPU": round(trial_cpus / workers, 4)}
    return PlacementGroupFactory([{}] + [worker] * workers, strategy=STRATEGIES[strategy])


class _Worker:
    """One worker of a trial (a Ray actor, two threads: ``run`` trains while ``poll`` hands
    worker 0's progress to the trial)."""

    def __init__(self) -> None:
        self._progress: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()

    def where(self) -> dict[str, Any]:
        """This worker's machine and the GPUs it holds (``held_gpus``)."""
        ctx = ray.get_runtime_context()
        return {"node_ip": ray.util.get_node_ip_address(), "node_id": ctx.get_node_id(),
                "hostname": socket.gethostname(), "gpus": held_gpus()}

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind(("", 0))
            return int(s.getsockname()[1])

    def run(self, rank: int, world: int, master_addr: str, port: int, spec: tuple[str, dict],
            recipe_dict: dict, limits_dict: dict, device_type: str, threads: int) -> None:
        worker_main(rank, world, master_addr, port, spec, recipe_dict, limits_dict,
                    device_type, threads, self._put if rank == 0 else None)

    def _put(self, item: dict[str, Any]) -> None:
        with self._lock:
            self._progress.append(item)

    def poll(self) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._progress)
            self._progress.clear()
        return items


def held_gpus() -> list[str]:
    """The ids of the GPUs Ray gave this process (its ``CUDA_VISIBLE_DEVICES``); empty on a
    CPU. Recorded per worker, so a record says which GPU each trial held."""
    return [str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


class RayLauncher:
    """``launch`` for ``run_trial`` inside a Ray Tune trial: starts the recipe's workers as
    actors in the trial's placement group. ``nodes`` lists each worker's machine once they are
    placed, and ``on_placed`` (if given) receives that list. ``device``: the trial's device as
    the search asked for it; ``cpu`` trains on the CPU even where the bundles hold GPUs."""

    def __init__(self, on_placed: Any = None, device: str | None = None) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.on_placed = on_placed
        self.device = device

    def __call__(self, task: Task, recipe: Recipe, limits: Any, report: Any,
                 device: str | None) -> Any:
        pg = get_current_placement_group()
        n = recipe.workers
        if pg is None or len(pg.bundle_specs) < n:
            return TrialResult.failed(
                objective.ERROR, f"the trial holds no placement group for its {n} workers "
                f"(bundles: {pg.bundle_specs if pg else None})", limits)
        bundles = pg.bundle_specs[:n]
        device_type = "cuda" if bundles[0].get("GPU") and self.device != "cpu" else "cpu"
        refused = check_launch(task, recipe, limits, device_type, None)
        if refused is not None:
            return refused
        remote = ray.remote(_Worker)
        actors = [
            remote.options(
                num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0), max_concurrency=2,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    pg, placement_group_bundle_index=rank),
            ).remote()
            for rank, bundle in enumerate(bundles)
        ]
        try:
            self.nodes = ray.get([a.where.remote() for a in actors])
            if self.on_placed is not None:
                self.on_placed(self.nodes)
            master = self.nodes[0]["node_ip"]
            port = ray.get(actors[0].free_port.remote())
            runs = {
                actors[rank].run.remote(
                    rank, n, master, port, task.load_spec, recipe.to_dict(),
                    dataclasses.asdict(limits), device_type,
                    max(1, int(bundle.get("CPU", 1) + 0.5)),
                ): rank
                for rank, bundle in enumerate(bundles)
            }
            final, why = self._pump(actors[0], runs, report)
        finally:
            for actor in actors:
                ray.kill(actor)
        return result_from_final(final, why, device_type, limits)

    def _pump(self, lead: Any, runs: dict[Any, int], report: Any
              ) -> tuple[dict[str, Any] | None, str]:
        """Forward worker 0's progress until every worker is done or one has failed."""

        pending = list(runs)
        failures: list[str] = []
        final: dict[str, Any] | None = None
        while pending and not failures:
            done, pending = ray.wait(pending, num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                try:
                    ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a worker's end, whatever it was
                    failures.append(self._describe(runs[ref], exc))
            final = self._drain(lead, report, final)
        return final, ", ".join(failures)

    def _drain(self, lead: Any, report: Any, final: dict[str, Any] | None
               ) -> dict[str, Any] | None:

        try:
            items = ray.get(lead.poll.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - worker 0 gone: its failure is reported by _pump
            return final
        for item in items:
            if item.get("final"):
                final = item
            elif report is not None:
                report(item)
        return final

    def _describe(self, rank: int, exc: BaseException) -> str:
        node = self.nodes[rank]["node_ip"] if rank < len(self.nodes) else "?"
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        cause = exc.cause if isinstance(exc, RayTaskError) else None
        if cause is not None:  # what the worker raised, not Ray's "ray::_Worker.run()" line
            text = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else ""
            reason = text if isinstance(cause, WorkerFailed) else \
                f"{type(cause).__name__}: {text}".rstrip(": ")
        if isinstance(exc, (ActorDiedError, RayActorError)):
            return (f"worker {rank} on {node} died (its process exited: a crash, the OOM "
                    f"killer, or its machine was lost): {reason}")
        return f"worker {rank} on {node} failed: {reason}"

