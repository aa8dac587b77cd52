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
"""

from __future__ import annotations

import dataclasses
import gc
import os
import queue
import socket
import time
from typing import Any

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
    try:
        for p in procs:
            p.start()
        final = _pump(procs, channel, report)
        for p in procs:
            p.join(timeout=WORKER_JOIN_SECONDS)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=WORKER_JOIN_SECONDS)
    codes = [p.exitcode for p in procs]
    failed = [(r, c) for r, c in enumerate(codes) if c not in (0, None)]
    why = ", ".join(f"worker {r} exited with {_describe_exit(c)}" for r, c in failed)
    return result_from_final(final, why, str(dev), limits)


def check_launch(task: Task, recipe: Recipe, limits: TrialLimits, device_type: str,
                 gpus_visible: int | None) -> TrialResult | None:
    """The result of a multi-worker trial that cannot start (None when it can)."""
    if task.load_spec is None:
        return TrialResult.failed(
            objective.ERROR, "a multi-worker recipe needs a task loaded by name "
            "(autotune.load_task), so that each worker process can build it", limits, device_type)
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


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {-code} (killed: a crash or the OOM killer)"
    return f"code {code}"


def _pump(procs: list, channel: Any, report: Any) -> dict[str, Any] | None:
    """Forward worker 0's progress until its final result, or until a worker dies."""
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
        if item.get("final"):
            return item
        if report is not None:
            report(item)


def _worker(rank: int, world: int, port: int, spec: tuple[str, dict], recipe_dict: dict,
            limits_dict: dict, device_type: str, threads: int, channel: Any) -> None:
    worker_main(rank, world, "127.0.0.1", port, spec, recipe_dict, limits_dict, device_type,
                threads, channel.put if rank == 0 else None)
    time.sleep(0.1)  # let the queue's feeder thread flush before the process exits


def worker_main(rank: int, world: int, master_addr: str, port: int, spec: tuple[str, dict],
                recipe_dict: dict, limits_dict: dict, device_type: str, threads: int,
                report: Any) -> None:
    """One worker's part of a multi-worker trial, in whatever process runs it (a spawned
    process here, a Ray actor in a search): join the group, build the task, train."""
    if device_type == "cpu":
        torch.set_num_threads(threads)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_worker(rank, world, master_addr, port, device_type)
    try:
        name, options = spec
        task = load_task(name, device_type, options)
        device = f"cuda:{rank % torch.cuda.device_count()}" if device_type == "cuda" else "cpu"
        train_in_process(task, Recipe.from_dict(recipe_dict), TrialLimits(**limits_dict),
                         report=report if rank == 0 else None, device=device)
        gc.collect()  # free DDP/FSDP/DeepSpeed wrappers while the process group exists
        dist.barrier()
    finally:
        dist.destroy_process_group()
