"""Running one multi-worker trial on this machine: one process per worker.

``run_workers`` starts ``recipe.workers`` processes (``spawn``), each of which rebuilds the task
from its name (``Task.load_spec``; a Task holds functions that do not pickle), joins a process
group (gloo on CPUs, NCCL on GPUs) and runs ``train_in_process`` (``autotune.train.loop``) as
its part of the run. Worker 0
sends its progress and result back through a queue; this process forwards progress to
``report`` and returns worker 0's result. A worker that dies (crash, killed by the OOM killer)
ends the trial as failed with the reason, and the other workers are stopped, instead of
waiting forever in a collective.

This is the launcher for one machine (``autotune train``, ``autotune.fit``). In a search, the
workers are Ray actors that Ray places in the trial's placement group, on one machine or
several (``autotune.search._workers``); both run ``worker_main``.

A task whose training loop is the user's own (``OwnsTraining``: a Hugging Face ``Trainer``, a
training function; ``autotune.integrations``) runs that loop in each worker instead, as
torchrun would start it: the process group is initialised already and the environment holds
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` (``torchrun_environment``), so the Trainer (through Accelerate) sees a
distributed run and wraps the model in DDP itself. An exception in the user's code on one
worker is that worker's alone (the others wait in a collective): its loop raises
``WorkerFailed``, the worker leaves the group at once (the others' collectives then fail
instead of waiting), and the launcher names the worker and the message.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import queue
import socket
import time
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from autotune import objective
from autotune.recipe import Recipe
from autotune.tasks import Task, load_task
from autotune.train.loop import pick_device, train_in_process
from autotune.train.parallel import init_worker
from autotune.train.result import ReportFn, TrialLimits, TrialResult

WORKER_JOIN_SECONDS = 30.0


class WorkerFailed(RuntimeError):
    """One worker of a multi-worker trial failed on its own (an exception in the user's code
    there, which the other workers cannot know of): raised out of ``worker_main`` so that the
    worker leaves the process group at once instead of meeting the others at its end. The
    message starts with ``worker N:``."""


@runtime_checkable
class OwnsTraining(Protocol):
    """A task whose trials run in the user's own training loop (a Hugging Face ``Trainer``,
    a training function: ``autotune.integrations``), under the same clock rules and records
    as this package's loop. ``run_trial`` hands such a task's trial to it; a multi-worker
    trial's workers (``worker_main``) each run it in a process group."""

    def train_own_loop(self, recipe: Recipe, limits: TrialLimits, report: ReportFn | None,
                       device: str | None) -> TrialResult:
        """One trial of ``recipe`` (in a worker: that worker's part of it); like
        ``run_trial``, never raises for what the recipe does, and calls ``report`` with
        ``final`` True at the end. In a worker, ``WorkerFailed`` when the user's code raised
        there alone."""
        ...

    def launch_refusal(self, recipe: Recipe, device_type: str) -> str | None:
        """Why the user's loop cannot run this multi-worker recipe on ``device_type`` (None
        when it can): the trial is infeasible before any worker starts."""
        ...


def torchrun_environment(rank: int, world: int, device_type: str) -> dict[str, str]:
    """What torchrun sets besides ``init_worker``'s variables, for a worker whose device is
    ``init_worker``'s: ``LOCAL_RANK`` is the index of its GPU among those it sees (a Ray
    actor sees only its own: 0), ``LOCAL_WORLD_SIZE`` the workers that share those GPUs (on
    a CPU: the rank and every worker, this launcher's one machine)."""
    if device_type == "cuda":
        visible = max(1, torch.cuda.device_count())
        return {"LOCAL_RANK": str(rank % visible), "LOCAL_WORLD_SIZE": str(min(world, visible))}
    return {"LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_workers(task: Task, recipe: Recipe, limits: TrialLimits, report: ReportFn | None,
                device: str | None) -> TrialResult:
    """Run a multi-worker trial; returns worker 0's ``TrialResult``."""
    dev = pick_device(device)
    gpus = torch.cuda.device_count() if dev.type == "cuda" else None
    refused = check_launch(task, recipe, limits, dev.type, gpus)
    if refused is not None:
        return refused
    ctx = mp.get_context("spawn")
    channel = ctx.Queue()
    port = _free_port()
    threads = max(1, (os.cpu_count() or 1) // recipe.workers)
    procs = [
        ctx.Process(
            target=_worker,
            args=(rank, recipe.workers, port, task.load_spec, recipe.to_dict(),
                  dataclasses.asdict(limits), dev.type, threads, channel),
            # Not daemonic, so that a worker may start DataLoader workers of its own (a
            # daemonic process may not have children); the finally below stops them instead.
            daemon=False,
        )
        for rank in range(recipe.workers)
    ]
    raised: dict[int, str] = {}  # rank -> what it raised, in the order they came
    try:
        for p in procs:
            p.start()
        final = _pump(procs, channel, report, raised)
        for p in procs:
            p.join(timeout=WORKER_JOIN_SECONDS)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=WORKER_JOIN_SECONDS)
    _drain_raised(channel, raised)
    return result_from_final(final, _why([p.exitcode for p in procs], raised), str(dev), limits)


def check_launch(task: Task, recipe: Recipe, limits: TrialLimits, device_type: str,
                 gpus_visible: int | None) -> TrialResult | None:
    """The result of a multi-worker trial that cannot start (None when it can)."""
    if isinstance(task, OwnsTraining):
        reason = task.launch_refusal(recipe, device_type)
        if reason:
            return TrialResult.failed(objective.INFEASIBLE, f"not possible here: {reason}",
                                      limits, device_type)
    if task.load_spec is None:
        how = ("a Trainer factory or training function named package.module:function (not "
               "defined in __main__ or inside a function)" if isinstance(task, OwnsTraining)
               else "a task loaded by name (autotune.load_task)")
        return TrialResult.failed(
            objective.ERROR, f"a multi-worker recipe needs {how}, so that each worker process "
            "can build it", limits, device_type)
    if device_type == "cuda" and gpus_visible is not None and gpus_visible < recipe.workers:
        return TrialResult.failed(
            objective.INFEASIBLE, f"{recipe.workers} workers need {recipe.workers} GPUs; "
            f"{gpus_visible} visible", limits, device_type)
    return None


def result_from_final(final: dict[str, Any] | None, why: str, device: str,
                      limits: TrialLimits) -> TrialResult:
    """Worker 0's final report as a ``TrialResult``; ``why`` names workers that died."""
    if final is None:
        return TrialResult.failed(objective.ERROR, why or "the workers ended without a result",
                                  limits, device)
    final = dict(final)
    if why and final.get("status") != objective.REACHED:
        # Worker 0 saw the others' death as a broken connection: name the cause first.
        final["message"] = f"{why}; worker 0: {final.get('message', '')}"
    final.pop("final", None)
    curve = [tuple(point) for point in final.pop("curve", [])]
    return TrialResult(**final, curve=curve)


def _why(codes: list[int | None], raised: dict[int, str]) -> str:
    """The workers that exited with an error, each with what it raised: those that raised
    first, in the order they did (the first is the cause, the others saw it as a broken
    connection), then the rest by rank."""
    failed = [r for r, c in enumerate(codes) if c not in (0, None)]
    first = [r for r in raised if r in failed]
    return ", ".join(f"worker {r} exited with {_describe_exit(codes[r])}"
                     + (f" ({raised[r]})" if r in raised else "")
                     for r in first + [r for r in failed if r not in first])


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {-code} (killed: a crash or the OOM killer)"
    return f"code {code}"


def _pump(procs: list, channel: Any, report: Any, raised: dict[int, str]
          ) -> dict[str, Any] | None:
    """Forward worker 0's progress until its final result, or until a worker dies; what a
    worker raised goes into ``raised``."""
    while True:
        try:
            item = channel.get(timeout=0.5)
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                return None
            if all(p.exitcode is not None for p in procs):
                return None
            continue
        if "raised" in item:
            raised.setdefault(item["rank"], item["raised"])
            continue
        if item.get("final"):
            return item
        if report is not None:
            report(item)


def _drain_raised(channel: Any, raised: dict[int, str]) -> None:
    """What the workers raised after worker 0's final result (a worker that failed on its
    own may say so only then)."""
    while True:
        try:
            item = channel.get(timeout=0.2)
        except (queue.Empty, OSError, ValueError):
            return
        if "raised" in item:
            raised.setdefault(item["rank"], item["raised"])


def _worker(rank: int, world: int, port: int, spec: tuple[str, dict], recipe_dict: dict,
            limits_dict: dict, device_type: str, threads: int, channel: Any) -> None:
    """A spawned worker: ``worker_main``; what it raises goes to the launcher (its message
    names the failure), then the process exits with code 1."""
    try:
        worker_main(rank, world, "127.0.0.1", port, spec, recipe_dict, limits_dict,
                    device_type, threads, channel.put if rank == 0 else None)
    except Exception as exc:  # noqa: BLE001 - any failure of this worker is reported by rank
        text = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ""
        channel.put({"rank": rank, "raised": text if isinstance(exc, WorkerFailed)
                     else f"{type(exc).__name__}: {text}"})
        time.sleep(0.1)  # let the queue's feeder thread flush before the process exits
        if isinstance(exc, WorkerFailed):
            raise SystemExit(1) from None  # its message says it all: no traceback
        raise
    time.sleep(0.1)  # let the queue's feeder thread flush before the process exits


def worker_main(rank: int, world: int, master_addr: str, port: int, spec: tuple[str, dict],
                recipe_dict: dict, limits_dict: dict, device_type: str, threads: int,
                report: Any) -> None:
    """One worker's part of a multi-worker trial, in whatever process runs it (a spawned
    process here, a Ray actor in a search): join the group, build the task, train. An
    ``OwnsTraining`` task's own loop trains, in torchrun's environment
    (``torchrun_environment``); ``WorkerFailed`` when it failed on this worker alone."""
    if device_type == "cpu":
        torch.set_num_threads(threads)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_worker(rank, world, master_addr, port, device_type)
    try:
        name, options = spec
        task = load_task(name, device_type, options)
        device = f"cuda:{rank % torch.cuda.device_count()}" if device_type == "cuda" else "cpu"
        recipe, limits = Recipe.from_dict(recipe_dict), TrialLimits(**limits_dict)
        mine = report if rank == 0 else None
        if isinstance(task, OwnsTraining):
            os.environ.update(torchrun_environment(rank, world, device_type))
            task.train_own_loop(recipe, limits, mine, device)
        else:
            train_in_process(task, recipe, limits, report=mine, device=device)
        gc.collect()  # free DDP/FSDP/DeepSpeed wrappers while the process group exists
        dist.barrier()
    finally:
        dist.destroy_process_group()
