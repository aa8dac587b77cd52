"""Screening on Ray: each system configuration measured (``autotune.train.screen``) in a Ray
task that holds a trial's resources, so it runs where trials run (one per GPU on a GPU
cluster, a whole node on CPUs, never in the driver), within screening's share of the time
budget. The decision and the restricted space are ``autotune.search.screening``'s (pure).

Each task process builds the task once (``task_for``) and serves configuration after
configuration. Measurements are started as slots free up (as many at once as the cluster
holds tasks of that size), each with the floor of the fastest measured before it
(``abandon_floor``). A measurement still running when the share is spent is cancelled and
recorded ``cut``, with those never started; every record is appended to ``screening.jsonl``
as it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayError

from autotune.recipe import Recipe
from autotune.results import CUT, REFUSED, ScreenRecord
from autotune.search._ray import raise_if_interrupted
from autotune.search._searcher import MemoryGate
from autotune.search._trainable import TrialSetup, task_for
from autotune.search.plan import SearchPlan
from autotune.search.screening import (
    SystemConfig,
    abandon_floor,
    decide,
    restricted_plan,
    screens,
    seconds_per_config,
    spread_sample,
    system_configs,
)
from autotune.train import pick_device
from autotune.train.screen import ERROR, screen

EventFn = Callable[[str, Any], None]


def measure(setup: TrialSetup, recipe: dict[str, Any], seconds: float,
            floor: float | None = None) -> dict[str, Any]:
    """One screening measurement in a Ray task process: ``ScreenResult.to_dict()``."""
    device = pick_device(setup.device)
    task = task_for(setup.model, device.type, setup.task_options)
    result = screen(task, Recipe.from_dict(recipe), str(device), seconds=seconds,
                    seed=setup.seed, budget_bytes=setup.budget_bytes, floor=floor,
                    track_memory=setup.budget_bytes is not None).to_dict()
    result["node_id"] = ray.get_runtime_context().get_node_id()
    return result


# One process serves every measurement (Ray's default for a GPU task is a fresh process each):
# the task is built once. A measurement whose process dies (a crash, the OOM killer) is
# recorded as an error, not retried.
_measure = ray.remote(max_calls=0, max_retries=0)(measure)


def screen_phase(plan: SearchPlan, setup: TrialSetup, resources: dict[str, float],
                 deadline: float | None, emit: EventFn, trials_before: int = 0) -> SearchPlan:
    """Screen the plan's system configurations (those a resumed search has not screened yet)
    and return the plan for the convergence trials (``restricted_plan``); ``plan`` itself when
    the search does not screen. A resumed search whose earlier runs ran trials without
    screening (``trials_before``, no records) goes on without it, on the space they ran on."""
    configs = system_configs(plan.space, plan.baseline, plan.workers_per_trial)
    done = {r.label: r for r in plan.run_dir.screen_records()}
    if not screens(plan, configs) or (trials_before and not done):
        return plan
    sampled = spread_sample(configs)
    todo = [(i, c) for i, c in enumerate(sampled) if c.label not in done]
    share = None if deadline is None else max(0.0, deadline - time.time())
    seconds = seconds_per_config(share, len(todo))
    emit("screening", {"configs": len(sampled), "sampled_from": len(configs),
                       "to_measure": len(todo), "seconds_each": seconds, "time_s": share})
    new = _measure_all(plan, setup, resources, todo, seconds, deadline, emit,
                       list(done.values()))
    records = sorted([*done.values(), *new], key=lambda r: r.order)
    records = [r for r in records if r.label in {c.label for c in sampled}]
    decisions = decide(records)
    restricted = restricted_plan(plan, sampled, decisions)
    emit("screened", {"records": records, "decisions": decisions,
                      "sampled_from": len(configs),
                      "warm_start": [ws.name for ws in restricted.suggestions]})
    return restricted


def _measure_all(plan: SearchPlan, setup: TrialSetup, resources: dict[str, float],
                 todo: list[tuple[int, SystemConfig]], seconds: float,
                 deadline: float | None, emit: EventFn,
                 earlier: list[ScreenRecord] | None = None) -> list[ScreenRecord]:
    """Gate, then measure ``todo`` as Ray tasks, ``slots(resources)`` at a time, each with
    the floor of the records so far (``earlier``: a resumed search's); every record appended
    as it ends."""
    r = plan.request
    gate = MemoryGate(plan.task, r.budget_bytes, plan.device_type) \
        if r.budget_bytes is not None else None
    out: list[ScreenRecord] = []

    def write(record: ScreenRecord) -> None:
        record.finished_at = time.time()
        plan.run_dir.append_screen(record)
        out.append(record)
        emit("screened_one", record)

    queue: list[ScreenRecord] = []
    for order, config in todo:
        record = ScreenRecord(config.label, config.values, "running", config.recipe.to_dict(),
                              config.is_baseline, order)
        if gate is not None:
            fits, prediction = gate.check(config.recipe)
            record.predicted_peak_bytes = (prediction or {}).get("peak_bytes")
            if not fits:
                record.status = REFUSED
                record.message = "predicted peak over the budget: not run"
                write(record)
                continue
        queue.append(record)
    pending: dict[Any, ScreenRecord] = {}
    options = {"num_cpus": resources["cpu"], "num_gpus": resources.get("gpu", 0)}
    width = slots(resources)

    def start_more() -> None:
        while queue and len(pending) < width:
            record = queue.pop(0)
            floor = abandon_floor([*(earlier or []), *out])
            pending[_measure.options(**options).remote(setup, record.recipe, seconds,
                                                       floor)] = record

    try:
        start_more()
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            if not ready:
                break
            raise_if_interrupted()
            record = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except RayError as exc:
                result = {"status": ERROR, "message": str(exc).strip().splitlines()[-1][:300]}
            write(record.with_result(result))
            start_more()
    except KeyboardInterrupt:  # not recorded: a resumed search measures them
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    for ref in pending:  # the time share is spent
        ray.cancel(ref, force=True)
    for record in [*pending.values(), *queue]:
        record.status = CUT
        record.message = "not measured: screening's share of the time budget was spent"
        write(record)
    return out


def slots(resources: dict[str, float]) -> int:
    """How many measurements of ``resources`` (a trial's) the Ray cluster runs at once: more
    started than that would only queue, and start with the floor of when they were queued."""
    total = ray.cluster_resources()
    fits = [int(total.get("CPU", 0.0) // resources["cpu"])] if resources.get("cpu") else []
    if resources.get("gpu"):
        fits.append(int(total.get("GPU", 0.0) // resources["gpu"]))
    return max(1, min(fits)) if fits else 1

