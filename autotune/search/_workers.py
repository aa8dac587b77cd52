"""Multi-worker trials on Ray: the workers of one trial are Ray Train workers that Ray places.

A trial whose recipe has ``workers > 1`` starts a ``TorchTrainer`` from inside its Tune
function (Ray Train's way of nesting training in Tune): Ray places the workers on any node
with room (one GPU each on a GPU cluster), Ray Train sets up the process group (gloo on CPUs,
NCCL on GPUs), and each worker runs ``autotune.train.run_trial`` as its part of the run. Worker
0 sends progress through a Ray queue to the trial, which forwards it to Tune sparingly (Ray
Train's own ``report`` costs over a second per call). The trial itself holds almost nothing
(``TRIAL_CPU``); the workers hold the CPUs/GPUs.
"""

from __future__ import annotations

import os
import queue as std_queue
import threading
from collections.abc import Callable
from typing import Any

from autotune import objective

TRIAL_CPU = 0.01
"""CPU the Tune trial of a multi-worker recipe holds while its Ray Train workers run."""
QUEUE_POLL_S = 1.0


def worker_resources(cluster: dict[str, float], nodes: int, workers: int,
                     device_type: str) -> dict[str, float]:
    """Resources of one worker: a GPU (and its share of CPUs) on GPUs; on CPU nodes, the
    node's CPUs (less the trial's share) divided among the workers."""
    cpus = float(cluster.get("CPU", 1)) / max(1, nodes)
    if device_type == "cuda":
        gpus = float(cluster.get("GPU", 1)) / max(1, nodes)
        return {"CPU": max(0.01, (cpus - TRIAL_CPU) / max(1.0, gpus)), "GPU": 1.0}
    return {"CPU": max(0.01, (cpus - TRIAL_CPU) / workers)}


def run_ray_workers(
    spec: tuple[str, dict[str, Any]], recipe_dict: dict[str, Any], limits_dict: dict[str, Any],
    device_type: str, per_worker: dict[str, float], report: Callable[[dict[str, Any]], None],
    storage_path: str,
) -> None:
    """Run one multi-worker trial with Ray Train; ``report`` gets progress and the final result
    (a failed worker group ends in a final ``error`` result naming the cause)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    channel = Queue(actor_options={"num_cpus": 0})
    workers = int(recipe_dict["workers"])
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"spec": spec, "recipe": recipe_dict, "limits": limits_dict,
                           "device_type": device_type, "queue": channel},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=device_type == "cuda",
                                     resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if device_type == "cuda" else "gloo"),
        run_config=RunConfig(storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=0)),
    )
    failure: list[str] = []

    def fit() -> None:
        try:
            trainer.fit()
        except Exception as exc:  # noqa: BLE001 - a failed worker group fails this trial only
            failure.append(f"{type(exc).__name__}: {_first_line(exc)}")

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    while True:
        try:
            item = channel.get(timeout=QUEUE_POLL_S)
        except std_queue.Empty:
            if not thread.is_alive():
                break
            continue
        report(item)
        if item.get("final"):
            break
    thread.join()
    if failure:
        report({
            "status": objective.ERROR,
            "score": objective.score(objective.ERROR, None, None, limits_dict["target"],
                                     limits_dict["max_train_seconds"]),
            "message": f"a worker of this {workers}-worker trial failed: {failure[0]}",
            "final": True,
        })


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    interesting = [ln for ln in lines if "Error" in ln or "died" in ln or "exit" in ln]
    return (interesting[-1] if interesting else lines[0] if lines else "")[:400]


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: rebuild the task and run its part of the trial."""
    import torch
    import torch.distributed as dist

    from autotune.recipe import Recipe
    from autotune.tasks import load_task
    from autotune.train import TrialLimits, run_trial

    if config["device_type"] == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    rank = dist.get_rank()
    name, options = config["spec"]
    task = load_task(name, config["device_type"], options)
    if config["device_type"] == "cuda":
        import ray.train.torch

        device = str(ray.train.torch.get_device())
    else:
        device = "cpu"
    channel = config["queue"]
    run_trial(task, Recipe.from_dict(config["recipe"]), TrialLimits(**config["limits"]),
              report=channel.put if rank == 0 else None, device=device)
