"""Multi-worker recipes in the user's own loop (issue 15): a Hugging Face ``Trainer`` or a
training function run in each worker as torchrun would start them
(``autotune.train.distributed.worker_main``), worker 0 deciding every evaluation and stop
(``autotune.integrations._session``), a worker that raises named without the others hanging.

Real components throughout: the tiny BERT ``Trainer`` of ``tests/hf_trainer_task.py``, the DDP
loop of ``tests/function_trainable.py``, spawned worker processes on a real gloo group, and a
real search on Ray. The workers are other processes: they write what they saw to files
(``RECORD_DIR``) that the tests read.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from autotune import objective
from autotune.integrations import function_task, trainer_task
from autotune.recipe import Recipe
from autotune.search import SearchRequest, search
from autotune.train import TrialLimits, run_trial
from tests import hf_trainer_task

pytestmark = pytest.mark.distributed

TRAINER = "tests.hf_trainer_task:make_recorded_trainer"
DDP_FUNCTION = "tests.function_trainable:train_ddp"


def _seen(folder: Path) -> list[dict]:
    """What each worker wrote, by rank."""
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.fixture
def record_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder the workers (spawned processes: they inherit the environment) write to."""
    folder = tmp_path / "seen"
    folder.mkdir()
    monkeypatch.setenv(hf_trainer_task.RECORD_DIR, str(folder))
    return folder


def test_a_ddp_trainer_trial_runs_the_trainer_distributed_in_two_workers(record_dir):
    """Each worker's Trainer sees a torchrun-style run of 2 (world size, parallel mode,
    environment, a DDP-wrapped model), trains on micro-batches of the recipe's batch size, and
    every worker takes the same number of steps and evaluations (worker 0 decides); each
    optimizer step covers batch x accumulation x workers examples."""
    recipe = Recipe(parallelism="ddp", workers=2, batch_size=8, accumulation_steps=2, lr=5e-4)
    task = trainer_task(TRAINER, metric="eval_accuracy", target=0.9, probe=False)
    reports: list[dict] = []
    result = run_trial(task, recipe, TrialLimits(max_train_seconds=12.0, eval_every_seconds=0.4,
                                                 target=0.9, seed=0),
                       report=reports.append, device="cpu")
    assert result.status in (objective.REACHED, objective.NOT_REACHED), result.message
    assert result.curve and result.steps > 0
    assert result.examples == result.steps * 8 * 2 * 2
    assert reports[-1]["final"] and reports[-1]["status"] == result.status
    seen = _seen(record_dir)
    for rank, worker in enumerate(seen):
        assert worker["world_size"] == 2 and worker["group"] == 2, worker
        assert worker["parallel_mode"] == "ParallelMode.DISTRIBUTED"
        assert worker["wrapped"] == "DistributedDataParallel"
        env = worker["env"]
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) \
            == (str(rank), str(rank), "2", "2")
        assert env["MASTER_ADDR"] and env["MASTER_PORT"]
        assert set(worker["rows"]) == {8}  # the recipe's batch is per device
        assert len(worker["rows"]) == 2 * worker["steps"]  # two micro-batches a step
    # agreement: the same steps and evaluations on both, and the gathered metric alike
    assert seen[0]["steps"] == seen[1]["steps"] == result.steps
    assert seen[0]["evaluations"] == seen[1]["evaluations"]
    assert [value for _, value in result.curve] == seen[0]["evaluations"]


def test_a_ddp_function_trial_sees_the_group_and_all_reduced_gradients(record_dir):
    """The function sees an initialised group of 2 and torchrun's environment; DDP's gradient
    is the mean of the two shards' gradients on both workers (each shard's own differs), and
    the workers end with the same weights after the same steps."""
    task = function_task(DDP_FUNCTION, metric="accuracy", target=0.95)
    result = run_trial(task, Recipe(parallelism="ddp", workers=2, batch_size=16, lr=0.05),
                       TrialLimits(max_train_seconds=10.0, eval_every_seconds=0.1, target=0.95,
                                   seed=0), device="cpu")
    assert result.status in (objective.REACHED, objective.NOT_REACHED), result.message
    assert result.curve and result.examples == result.steps * 16 * 2
    seen = _seen(record_dir)
    for rank, worker in enumerate(seen):
        assert worker["initialized"] and worker["world"] == 2 and worker["rank"] == rank
        assert worker["ctx"] == [rank, 2]
        assert worker["env"]["RANK"] == str(rank) and worker["env"]["WORLD_SIZE"] == "2"
        assert worker["env"]["LOCAL_WORLD_SIZE"] == "2"
    own = [torch.tensor(w["own_grad"]) for w in seen]
    grads = [torch.tensor(w["grad"]) for w in seen]
    assert not torch.allclose(own[0], own[1], atol=1e-3)  # the shards differ
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], (own[0] + own[1]) / 2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(seen[0]["weights"]),
                               torch.tensor(seen[1]["weights"]))


def test_a_worker_that_raises_ends_the_trial_as_an_error_naming_it_without_a_hang(record_dir):
    """Worker 1's function raises after 5 steps while worker 0 goes on into the next gradient
    all-reduce: the trial ends at once (not at the process group's 10-minute timeout) as an
    error naming worker 1 and what it raised."""
    task = function_task("tests.function_trainable:train_ddp_failing_on_rank_1",
                         metric="accuracy", target=1.01)
    began = time.perf_counter()
    result = run_trial(task, Recipe(parallelism="ddp", workers=2, batch_size=16, lr=0.05),
                       TrialLimits(max_train_seconds=30.0, eval_every_seconds=0.1, target=1.01,
                                   seed=0), device="cpu")
    wall = time.perf_counter() - began
    assert result.status == objective.ERROR, result.message
    assert result.message.startswith("worker 1 exited with code 1 (worker 1: error: the "
                                     "training function"), result.message
    assert "ValueError: worker 1's shard is broken" in result.message
    assert wall < 60, wall  # spawning and importing two workers takes ~5-15 s here


@pytest.mark.slow  # ~30 s: imports transformers in both workers
def test_a_trainer_worker_that_raises_ends_the_trial_as_an_error_naming_it(record_dir):
    task = trainer_task("tests.hf_trainer_task:fails_on_rank_1", metric="eval_accuracy",
                        target=0.99, probe=False)
    began = time.perf_counter()
    result = run_trial(task, Recipe(parallelism="ddp", workers=2, batch_size=8, lr=5e-4),
                       TrialLimits(max_train_seconds=30.0, eval_every_seconds=0.5, target=0.99,
                                   seed=0), device="cpu")
    assert result.status == objective.ERROR, result.message
    assert result.message.startswith("worker 1 exited with code 1 (worker 1: error: the "
                                     "Trainer raised ValueError: worker 1's data is broken"), \
        result.message
    assert time.perf_counter() - began < 90


@pytest.mark.parametrize(("factory", "recipe", "reason"), [
    (DDP_FUNCTION, Recipe(parallelism="zero2", workers=2, precision="fp16"),
     "DeepSpeed does not support fp16 on the CPU"),
    ("tests.hf_trainer_task:make_trainer", Recipe(parallelism="pipeline", workers=2),
     "the Trainer has no pipeline parallelism"),
    # Accelerate 1.15 ignores the FSDP plugin on a CPU: the Trainer would train DDP copies.
    ("tests.hf_trainer_task:make_trainer", Recipe(parallelism="fsdp", workers=2),
     "on a CPU (MULTI_CPU) it ignores the FSDP settings"),
])
def test_a_recipe_the_loop_cannot_run_is_infeasible_before_any_worker_starts(
        factory, recipe, reason):
    build = trainer_task if "hf_trainer" in factory else function_task
    task = build(factory, metric="eval_accuracy", target=0.9, **(
        {"probe": False} if build is trainer_task else {}))
    began = time.perf_counter()
    result = run_trial(task, recipe, TrialLimits(max_train_seconds=5.0, eval_every_seconds=0.5,
                                                 target=0.9), device="cpu")
    assert result.status == objective.INFEASIBLE and reason in result.message, result.message
    assert result.steps == 0 and time.perf_counter() - began < 2  # nothing was spawned


def test_a_trainer_that_would_not_train_the_recipes_parallelism_is_refused(tmp_path):
    """A real Trainer built for a 2-worker recipe in one process (no group: it sees 1
    process), and one whose Accelerator has no DeepSpeed for a ZeRO recipe, would train
    something else under the recipe's name."""
    from autotune.integrations.hf_trainer import trainer_arguments, unapplied_parallelism

    ddp = Recipe(parallelism="ddp", workers=2, batch_size=8)
    trainer = hf_trainer_task.make_trainer(trainer_arguments(ddp, tmp_path, "cpu"))
    assert unapplied_parallelism(ddp, trainer) == \
        "the Trainer sees 1 process(es), the recipe has 2 workers"
    assert unapplied_parallelism(ddp.replace(parallelism="single", workers=1), trainer) is None
    zero = Recipe(parallelism="zero2", workers=1, batch_size=8)
    assert "did not enable DeepSpeed" in unapplied_parallelism(zero, trainer)


def test_a_factory_that_other_processes_cannot_import_is_named():
    def local_loop(recipe: Recipe, ctx: object) -> None:  # defined in a function
        raise AssertionError("never run")

    task = function_task(local_loop, metric="accuracy", target=0.9)
    result = run_trial(task, Recipe(parallelism="ddp", workers=2),
                       TrialLimits(max_train_seconds=5.0, eval_every_seconds=0.5, target=0.9),
                       device="cpu")
    assert result.status == objective.ERROR
    assert "named package.module:function (not defined in __main__ or inside a function)" \
        in result.message


@pytest.mark.slow  # ~25-40 s: Ray, and a ddp trial of two Trainer workers as Ray actors
def test_a_trainer_search_runs_a_ddp_trial_in_two_workers(tmp_path):
    """A real search (Ray Tune, Optuna) over a space of ddp recipes: the trial's two workers
    are Ray actors (``autotune.search._workers``) whose Trainers train distributed, recorded
    with the workers' machines, not refused."""
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  parallelism: {value: ddp}\n  lr: {choices: [0.0005]}\n")
    outcome = search(SearchRequest(
        model="tests.hf_trainer_task:make_trainer", integration="trainer",
        metric="eval_accuracy", target=0.8, eval_every_s=0.5, space=str(space),
        baseline=Recipe(parallelism="ddp", workers=2, batch_size=16, lr=5e-4).to_dict(),
        max_trial_seconds=20.0, trials=1, workers_per_trial=2, confirm_top=0, seed=0,
        results_dir=str(tmp_path / "run"), time_budget_s=240, warm_start=False))
    (record,) = outcome.records
    assert record.recipe["parallelism"] == "ddp" and record.recipe["workers"] == 2
    assert record.status == objective.REACHED, record.message
    assert len(record.worker_nodes) == 2 and record.curve
    assert record.examples == record.steps * 16 * 2


@pytest.mark.slow  # 10-30 s each; DeepSpeed builds its CPU communication op once (~1 min)
@pytest.mark.parametrize(("mode", "precision", "wrapper"), [
    ("zero1", "bf16", "DeepSpeedEngine"), ("zero2", "fp32", "DeepSpeedEngine"),
    ("zero3", "bf16", "DeepSpeedEngine"),
])
def test_zero_trainer_trials_run_on_the_cpu(mode, precision, wrapper, record_dir):
    """ZeRO through the Trainer on a CPU (gloo, DeepSpeed's CPU accelerator): the Trainer
    wraps the model in DeepSpeed's engine itself and the trial reaches the target."""
    task = trainer_task(TRAINER, metric="eval_accuracy", target=0.9, probe=False)
    result = run_trial(task, Recipe(parallelism=mode, workers=2, precision=precision,
                                    batch_size=16, lr=5e-4),
                       TrialLimits(max_train_seconds=20.0, eval_every_seconds=0.5, target=0.9,
                                   seed=0), device="cpu")
    assert result.status == objective.REACHED, result.message
    assert result.examples == result.steps * 16 * 2
    for worker in _seen(record_dir):
        assert wrapper in worker["wrapped"] and worker["world_size"] == 2, worker


def test_a_worker_failure_in_a_search_is_named_by_what_the_worker_raised():
    """In a search a worker is a Ray actor, and ``ray.get`` raises Ray's wrapper of what the
    worker raised, whose first line is Ray's ("ray::_Worker.run() (pid=...)"): the record
    names the worker's own exception instead."""
    from ray.exceptions import RayTaskError

    from autotune.search._workers import RayLauncher
    from autotune.train import WorkerFailed

    launcher = RayLauncher()
    launcher.nodes = [{"node_ip": "10.0.0.1"}, {"node_ip": "10.0.0.2"}]

    def wrapped(cause: Exception) -> BaseException:
        return RayTaskError("_Worker.run", "Traceback ...", cause,
                            proctitle="ray::_Worker.run()").as_instanceof_cause()

    text = launcher._describe(1, wrapped(ValueError("bad batch on this rank")))
    assert text == "worker 1 on 10.0.0.2 failed: ValueError: bad batch on this rank"
    failed = WorkerFailed("worker 1: error: the training function m:f raised KeyError: 'x'")
    assert launcher._describe(1, wrapped(failed)) == (
        "worker 1 on 10.0.0.2 failed: worker 1: error: the training function m:f raised "
        "KeyError: 'x'")
