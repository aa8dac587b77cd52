"""GPU placement on a simulated cluster: two ``ray start`` nodes that declare 4 GPUs each (no
CUDA here; Ray schedules declared GPUs like real ones), searched with
``AUTOTUNE_SIMULATE_GPUS=1`` (``autotune.search._ray.simulating_gpus``), so the search holds
GPUs as on a GPU cluster while the trials train on the CPU.

What it shows: one GPU per trial and per worker, never the same GPU for two trials at once; the
concurrency that follows from 8 declared GPUs; a two-worker trial packed on one node with
``--placement pack`` and spread over both with ``spread``; and a trial that needs more GPUs
than a node (or the cluster) has ends at once with the missing resources named, instead of
waiting in Ray's queue for ever. The cluster (``tests.test_cluster.Cluster``, with token
authentication) is shared by the module's tests; each search is a real ``autotune search``
process with a 1-second trial limit and an unreachable target, so every trial trains to its
limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autotune import objective
from autotune.search._ray import SIMULATE_GPUS_ENV, placement_problem
from tests.test_cluster import ROOT, Cluster

pytestmark = pytest.mark.distributed

GPUS_PER_NODE = 4
SPACE = """\
knobs:
  parallelism: {choices: [single, ddp]}
  lr: {low: 1.0e-3, high: 3.0e-2, log: true}
"""
SEARCH_TIMEOUT_S = 120
"""A search that waits for resources longer than this is a hang (each takes about 20 s)."""


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[Cluster]:
    """Two nodes of 4 CPUs and 4 declared GPUs each (the machine has 2 cores, which the
    1-second trials share; Ray counts what the nodes declare)."""
    c = Cluster(cpus=4, gpus=GPUS_PER_NODE)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _search(cluster: Cluster, tmp_path: Path, *extra: str
            ) -> tuple[subprocess.CompletedProcess, list[dict[str, Any]], float]:
    """``autotune search`` on the toy task against ``cluster`` with simulated GPUs: the task's
    warm start is the ddp recipe, run right after the baseline. Half a CPU per trial (and per
    worker), so that the declared GPUs, not the CPUs, limit how many run. Returns the process,
    the trial records and the wall seconds; a search that does not end within
    ``SEARCH_TIMEOUT_S`` fails the test (it is killed)."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    results = tmp_path / "results"
    start = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "autotune.cli", "search", "--model",
             "tests.toy_task:make_task", "--task-option", 'suggest={"parallelism": "ddp"}',
             "--task-warm-start", "--space", str(space), "--address", cluster.address,
             "--no-screen", "--confirm", "0", "--target", "1.01", "--max-trial-time", "1s",
             "--cpus-per-trial", "0.5", "--results-dir", str(results), *extra],
            capture_output=True, text=True, env={**cluster.env, SIMULATE_GPUS_ENV: "1"},
            cwd=str(ROOT), timeout=SEARCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the search hung ({SEARCH_TIMEOUT_S} s): {str(exc.stdout)[-2000:]}")
    trials = results / "trials.jsonl"
    records = [json.loads(line) for line in trials.read_text().splitlines()] \
        if trials.exists() else []
    return done, records, time.monotonic() - start


def _ran(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The launched trials, each checked to have trained to its limit on the CPU."""
    ran = [r for r in records if r["launched"]]
    for r in ran:
        assert r["status"] in (objective.NOT_REACHED, objective.STOPPED), \
            (r["status"], r["message"])
        assert r["device"] == "cpu" and r["steps"] > 0, r
    return ran


def _most_at_once(records: list[dict[str, Any]]) -> int:
    """The most trials whose [start, end] overlap at one moment."""
    return max(sum(o["started_at"] <= r["started_at"] <= o["finished_at"] for o in records)
               for r in records)


def test_one_gpu_per_trial_and_per_worker_and_eight_trials_at_once(gpu_cluster, tmp_path):
    """4 trials (the baseline, the ddp warm start, two sampled) with ``--placement pack``: the
    search computes 8 trials at once from 8 declared GPUs and starts all 4 together; each
    trial, and each worker of the ddp trial, holds exactly one GPU, no GPU serves two running
    trials, and the ddp trial's two workers share one node."""
    done, records, wall = _search(gpu_cluster, tmp_path, "--trials", "4", "--placement",
                                  "pack", "--workers-per-trial", "2")
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    assert "up to 8 trials at once, each holding 1 GPU and 0.5 CPU" in done.stdout, done.stdout
    ran = _ran(records)
    assert len(ran) == 4, records
    held: list[tuple[str, str, dict[str, Any]]] = []
    for r in ran:
        workers = r["recipe"]["workers"]
        assert len(r["worker_nodes"]) == len(r["worker_gpus"]) == workers, r
        assert all(len(ids) == 1 for ids in r["worker_gpus"]), r["worker_gpus"]
        held += [(node, ids[0], r) for node, ids in zip(r["worker_nodes"], r["worker_gpus"])]
    for i, (node, gpu, r) in enumerate(held):
        for other_node, other_gpu, o in held[i + 1:]:
            overlap = r["started_at"] < o["finished_at"] and o["started_at"] < r["finished_at"]
            assert not (overlap and (node, gpu) == (other_node, other_gpu)), (node, gpu)
    parallel = [r for r in ran if r["recipe"]["parallelism"] == "ddp"]
    assert parallel, [r["recipe"] for r in ran]
    for r in parallel:
        assert len(set(r["worker_nodes"])) == 1, r["worker_nodes"]  # packed on one node
    assert _most_at_once(ran) >= 3, [(r["started_at"], r["finished_at"]) for r in ran]
    print(f"\n4 trials (pack): {wall:.1f} s, at most {_most_at_once(ran)} at once, GPUs held: "
          f"{[(n[:6], g) for n, g, _ in held]}")


def test_spread_puts_a_trials_two_workers_on_two_nodes(gpu_cluster, tmp_path):
    """``--placement spread``: the ddp trial's two workers, one GPU each, on different nodes."""
    done, records, wall = _search(gpu_cluster, tmp_path, "--trials", "2", "--placement",
                                  "spread", "--workers-per-trial", "2")
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    parallel = [r for r in _ran(records) if r["recipe"]["parallelism"] == "ddp"]
    assert len(parallel) == 1, records
    r = parallel[0]
    assert len(set(r["worker_nodes"])) == 2, r["worker_nodes"]
    assert [len(ids) for ids in r["worker_gpus"]] == [1, 1], r["worker_gpus"]
    print(f"\n2 trials (spread): {wall:.1f} s, ddp workers on {len(set(r['worker_nodes']))} "
          "nodes")


def test_a_recipe_needing_more_gpus_than_the_cluster_has_is_refused_at_once(
        gpu_cluster, tmp_path):
    """A ddp recipe of 9 workers (9 GPUs; the cluster declares 8) is recorded infeasible,
    never launched, with what is missing; the baseline still runs and the search ends in
    seconds. Without the check, Ray keeps the trial pending for ever."""
    done, records, wall = _search(gpu_cluster, tmp_path, "--trials", "2",
                                  "--workers-per-trial", "9")
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    refused = [r for r in records if not r["launched"]]
    assert len(refused) == 1 and len(_ran(records)) == 1, records
    r = refused[0]
    assert r["status"] == objective.INFEASIBLE and r["recipe"]["workers"] == 9, r
    assert "4.5 CPU and 9 GPU in all" in r["message"], r["message"]
    assert "only 8 such worker(s): not enough GPU (" in r["message"], r["message"]
    assert "could not be placed on the cluster" in done.stderr, done.stderr
    assert wall < 60, wall
    print(f"\n9-worker recipe refused: search of 2 trials ended in {wall:.1f} s")


def test_a_trial_needing_more_gpus_than_a_node_has_is_an_error_up_front(gpu_cluster, tmp_path):
    """``--gpus-per-trial 5`` on 4-GPU nodes: no trial can ever start, so the search stops
    before the first one with autotune's error (exit 2, no traceback) naming the resource."""
    done, records, wall = _search(gpu_cluster, tmp_path, "--trials", "2", "--gpus-per-trial",
                                  "5")
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no trial of this search can start: a trial needs 0.5 CPU and 5 GPU on one node, " \
           "but no node has enough GPU" in done.stderr, done.stderr
    assert "at most 4 CPU, 4 GPU on one node" in done.stderr and "Traceback" not in done.stderr
    assert records == []
    assert wall < 60, wall
    print(f"\n--gpus-per-trial 5: error after {wall:.1f} s")


# -- placement_problem on its own (no cluster): each strategy's rule ---------------------------

NODES = [{"CPU": 4.0, "GPU": 4.0, "memory": 1e9}] * 2
GPU_TRIAL = {"cpu": 1, "gpu": 1}


@pytest.mark.parametrize(("workers", "strategy", "fits"), [
    (1, "PACK", True), (4, "PACK", True),
    (5, "PACK", True),  # PACK spills to the second node
    (8, "PACK", True), (9, "PACK", False),
    (2, "SPREAD", True), (3, "SPREAD", False),  # one worker per node
])
def test_placement_problem_follows_the_strategy(workers: int, strategy: str, fits: bool):
    problem = placement_problem(GPU_TRIAL, workers, strategy, NODES)
    assert (problem is None) == fits, problem


def test_placement_problem_on_cpu_nodes_packs_a_trials_cpus_and_spreads_whole_nodes():
    """On CPU nodes a packed trial's workers share the trial's CPUs (any worker count fits a
    node), while spread workers each take them: 3 need 3 nodes."""
    cpu_nodes = [{"CPU": 4.0}] * 2
    assert placement_problem({"cpu": 4}, 3, "PACK", cpu_nodes) is None
    problem = placement_problem({"cpu": 4}, 3, "SPREAD", cpu_nodes)
    assert problem is not None and "only 2 node(s) can hold one" in problem, problem
    mixed = [{"CPU": 4.0}, {"CPU": 0.5, "GPU": 4.0}]
    problem = placement_problem(GPU_TRIAL, 1, "PACK", mixed)
    assert problem is not None and "no node has all of it" in problem, problem
