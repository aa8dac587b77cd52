"""A real small search: Ray Tune runs the trials, Optuna proposes, results land on disk."""

import json

import pytest
import yaml

from autotune import objective
from autotune.cli import main
from autotune.recipe import Recipe

SPACE = """\
model: toy
knobs:
  precision: {choices: [fp32, bf16]}
  batch_size: {choices: [16, 32, 64]}
  optimizer: {choices: [adamw, sgd]}
  lr: {low: 1.0e-3, high: 3.0e-2, log: true, when: {optimizer: adamw}}
  lr@sgd: {low: 0.01, high: 0.3, log: true, when: {optimizer: sgd}}
  warmup_steps: {choices: [0, 5]}
"""


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    results = tmp / "results"
    output = tmp / "out" / "best.yaml"
    code = main([
        "search", "--model", "tests.toy_task:make_task", "--space", str(space),
        "--budget", "16GB", "--trials", "4", "--time-budget", "3m", "--seed", "0",
        "--confirm", "1", "--confirm-seeds", "1",
        "--results-dir", str(results), "--output", str(output),
    ])
    return code, results, output


def test_search_exits_cleanly(search_run):
    code, _, _ = search_run
    assert code == 0


def test_every_trial_is_on_disk_with_recipe_and_measurements(search_run):
    _, results, _ = search_run
    everything = [json.loads(line) for line in (results / "trials.jsonl").read_text().splitlines()]
    records = [r for r in everything if r["rerun_of"] is None]
    assert len(records) == 4
    # confirmation: the fastest recipe and the baseline ran again with seed 1
    reruns = [r for r in everything if r["rerun_of"] is not None]
    assert 1 <= len(reruns) <= 2, reruns
    originals = {r["trial"]: r for r in records}
    for r in reruns:
        assert r["seed"] == 1 and r["recipe"] == originals[r["rerun_of"]]["recipe"]
    assert records[0]["is_baseline"] and records[0]["recipe"]["precision"] == "fp32"
    assert records[0]["recipe"]["lr"] == 1e-2 and records[0]["recipe"]["optimizer"] == "adamw"
    for r in records:
        Recipe.from_dict(r["recipe"])
        assert r["status"] in (objective.REACHED, objective.STOPPED, objective.NOT_REACHED)
        assert r["peak_memory_bytes"] > 0
        assert r["train_seconds"] > 0
    assert len({json.dumps(r["recipe"], sort_keys=True) for r in records}) == 4


def test_best_recipe_yaml_holds_recipe_measurements_and_speedup(search_run):
    _, results, output = search_run
    doc = yaml.safe_load(output.read_text())
    recipe = Recipe.load(output)
    assert recipe.to_dict() == doc["recipe"]
    measured = doc["measured"]
    assert measured["tta_seconds"] > 0 and measured["peak_memory_bytes"] > 0
    # the winner's TTA is the median of its runs (first seed and the confirmation seed)
    assert measured["tta_seeds"] == [0, 1] and measured["tta_is_median_of"] == 2
    runs = measured["tta_runs"]
    assert measured["tta_seconds"] == pytest.approx(sum(runs) / 2)
    assert measured["tta_spread"] == [min(runs), max(runs)]
    assert doc["task"]["name"] == "tests.toy_task:make_task" and doc["task"]["target"] == 0.9
    assert doc["search"]["seed"] == 0 and doc["search"]["budget_bytes"] == 16 * 10**9
    assert {"python", "torch", "ray", "optuna"} <= set(doc["versions"])
    assert "cpu" in doc["measured"]["device"]
    base = doc["baseline"]
    assert base["status"] == objective.REACHED
    assert doc["speedup"] == pytest.approx(base["tta_seconds"] / measured["tta_seconds"], rel=1e-2)
    assert doc["speedup"] >= 1.0  # the baseline is a candidate, so the best is never slower
    assert (results / "search.yaml").exists()


def test_warm_start_points_put_the_baseline_first_and_skip_recipes_outside_the_space(tmp_path):
    from autotune.search._tune import SearchConfig, warm_start_points
    from autotune.space import parse_space

    space = parse_space(SPACE)
    baseline = Recipe(lr=1e-2)
    config = SearchConfig(
        model="toy", space=space, baseline=baseline, target=0.9, max_train_seconds=5,
        results_dir=tmp_path, suggestions=(
            baseline.replace(precision="bf16"),
            baseline.replace(precision="fp16"),  # not in the space: skipped
            baseline,  # the baseline again: not run twice
            baseline.replace(batch_size=64, lr=2e-2),
        ),
    )
    points = warm_start_points(config)
    assert points[0] == space.point_for(baseline)
    assert [p["precision"] for p in points] == ["fp32", "bf16", "fp32"]
    assert points[2]["batch_size"] == 64 and points[2]["lr"] == 2e-2


def test_unreachable_target_says_so_exits_2_and_keeps_what_was_measured(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    results = tmp_path / "results"
    code = main([
        "search", "--model", "tests.toy_task:make_task", "--space", str(space), "--target",
        "1.01", "--trials", "2", "--max-trial-time", "1s", "--results-dir", str(results),
    ])
    err = capsys.readouterr().err
    assert code == 2
    assert "no trial reached the target accuracy 1.01" in err and "trials.jsonl" in err
    records = [json.loads(line) for line in (results / "trials.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["best_metric"] > 0.5 for r in records)
    assert not (results / "best_recipe.yaml").exists()
    assert (results / "search.yaml").exists()


def test_ctrl_c_keeps_finished_trials_and_records_the_running_one(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "search", "--model", "tests.toy_task:make_task",
         "--space", str(space), "--target", "1.01", "--trials", "20", "--max-trial-time", "4s",
         "--results-dir", str(results)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    trials = results / "trials.jsonl"
    for line in proc.stdout:  # progress lines arrive as trials start and end
        if line.startswith("[  2/20] running"):
            break
    time.sleep(1.0)  # trial 2 trains now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "search interrupted" in err and "trials.jsonl" in err
    records = [json.loads(line) for line in trials.read_text().splitlines()]
    assert records[0]["status"] == objective.NOT_REACHED
    assert records[-1]["status"] == objective.INTERRUPTED


PARALLEL_SPACE = """\
model: toy
knobs:
  parallelism: {choices: [single, ddp, fsdp, zero2]}
  batch_size: {choices: [16, 32]}
"""


@pytest.mark.distributed
def test_search_over_parallel_modes_runs_each_with_two_workers(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(PARALLEL_SPACE)
    results = tmp_path / "results"
    code = main([
        "search", "--model", "tests.toy_task:make_task", "--space", str(space),
        "--trials", "5", "--workers-per-trial", "2", "--results-dir", str(results),
        "--confirm", "0",
    ])
    assert code == 0
    records = [json.loads(line) for line in (results / "trials.jsonl").read_text().splitlines()]
    modes = {r["recipe"]["parallelism"]: r for r in records}
    assert len(modes) >= 3, [r["recipe"]["parallelism"] for r in records]
    for mode, r in modes.items():
        assert r["status"] == objective.REACHED, (mode, r["message"])
        workers = 1 if mode == "single" else 2
        assert r["recipe"]["workers"] == workers
        # every optimizer step covered batch_size x workers examples
        assert r["examples"] == r["steps"] * r["recipe"]["batch_size"] * workers


@pytest.mark.distributed
def test_a_dead_worker_fails_only_its_trial_and_the_search_goes_on(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  parallelism: {choices: [single, ddp]}\n"
                     "  batch_size: {choices: [16, 32]}\n")
    results = tmp_path / "results"
    main(["search", "--model", "tests.toy_task:make_crashing_task", "--space", str(space),
          "--trials", "4", "--max-trial-time", "1s", "--workers-per-trial", "2",
          "--seed", "3", "--results-dir", str(results)])
    records = [json.loads(line) for line in (results / "trials.jsonl").read_text().splitlines()]
    assert len(records) == 4  # the search went on after the failure
    crashed = [r for r in records if r["recipe"]["parallelism"] == "ddp"]
    assert crashed, "the sampler proposed no ddp trial; change --seed"
    for r in crashed:
        assert r["status"] == objective.ERROR
        assert "worker 1 on " in r["message"] and "died" in r["message"], r["message"]
    assert all(r["status"] == objective.NOT_REACHED for r in records
               if r["recipe"]["parallelism"] == "single")


@pytest.mark.distributed
def test_early_stopped_multi_worker_trials_free_their_workers(tmp_path):
    """The scheduler stops losing ddp trials; their workers (Ray actors in the trial's placement
    group) must go with them, or the next trial waits forever for CPUs."""
    from autotune.search import SearchConfig, run_search
    from autotune.space import parse_space
    from tests.toy_task import make_task

    space = parse_space("knobs:\n  parallelism: {value: ddp}\n"
                        "  lr: {choices: [0.000001, 0.03]}\n  batch_size: {choices: [16, 32]}\n")
    config = SearchConfig(
        model="tests.toy_task:make_task", space=space,
        baseline=Recipe(parallelism="ddp", workers=2, lr=1e-6), target=1.01,
        max_train_seconds=3.0, results_dir=tmp_path, trials=4, seed=0,
        report_interval_s=0.2, grace_period_s=0.3, workers_per_trial=2,
    )
    assert make_task().target < config.target  # unreachable: only the scheduler ends trials early
    outcome = run_search(config)
    statuses = [r["status"] for r in outcome.records]
    assert len(statuses) == 4, statuses  # the search did not hang after a stopped trial
    assert objective.STOPPED in statuses, statuses
    for r in outcome.records:
        assert len(r["worker_nodes"]) == 2, r


def test_a_crashed_trial_process_is_recorded_and_the_search_goes_on(tmp_path):
    """A trial process killed by SIGKILL (the OOM killer, a segfault) fails that trial only."""
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  batch_size: {choices: [32, 64]}\n"
                     "  lr: {low: 1.0e-3, high: 3.0e-2, log: true}\n")
    results = tmp_path / "results"
    main(["search", "--model", "tests.toy_task:make_crashing_task", "--space", str(space),
          "--task-option", "crash_batch=64", "--trials", "4", "--max-trial-time", "1s",
          "--seed", "1", "--results-dir", str(results)])
    records = [json.loads(line) for line in (results / "trials.jsonl").read_text().splitlines()]
    assert len(records) == 4
    crashed = [r for r in records if r["recipe"]["batch_size"] == 64]
    assert crashed, "the sampler proposed no batch of 64; change --seed"
    for r in crashed:
        assert r["status"] == objective.ERROR
        assert "died" in r["message"] or "exit" in r["message"], r["message"]
    assert all(r["status"] == objective.NOT_REACHED for r in records
               if r["recipe"]["batch_size"] == 32)


def test_a_tight_budget_launches_no_trial_that_exceeds_it(tmp_path):
    """Recipes predicted over the budget are recorded as infeasible with their prediction and
    never launched; every launched trial's measured peak fits."""
    from autotune.memory import predict_peak
    from autotune.tasks import load_task

    task = load_task("tests.toy_task:make_task")
    small = predict_peak(task, Recipe(batch_size=32, lr=1e-2)).peak_bytes
    large = predict_peak(task, Recipe(batch_size=256, lr=1e-2)).peak_bytes
    assert large > 1.3 * small
    budget = int((small * 1.1 + large) / 2)
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  batch_size: {choices: [32, 256]}\n"
                     "  lr: {low: 1.0e-3, high: 3.0e-2, log: true}\n")
    results = tmp_path / "results"
    main(["search", "--model", "tests.toy_task:make_task", "--space", str(space),
          "--budget", f"{budget}B", "--trials", "6", "--confirm", "0", "--seed", "2",
          "--results-dir", str(results)])
    records = [json.loads(line) for line in (results / "trials.jsonl").read_text().splitlines()]
    assert len(records) == 6
    refused = [r for r in records if not r["launched"]]
    assert refused, "the sampler proposed no batch of 256; change --seed"
    for r in refused:
        assert r["recipe"]["batch_size"] == 256
        assert r["status"] == objective.INFEASIBLE and "not launched" in r["message"]
        assert r["predicted_peak_bytes"] > budget / 1.05
        assert r["steps"] is None if "steps" in r else True
    launched = [r for r in records if r["launched"]]
    assert launched
    for r in launched:
        assert r["recipe"]["batch_size"] == 32
        assert r["peak_memory_bytes"] <= budget, r
        assert r["predicted_peak_bytes"] > 0 and abs(r["prediction_error"]) < 0.15
