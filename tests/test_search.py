"""A real small search: Ray Tune runs the trials, Optuna proposes, results land on disk.

The search is driven through the Python API (``autotune.search.search``); the CLI tests cover
what the command line adds (flags, exit codes, signals).
"""

import json

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from autotune import objective
from autotune.cli import main
from autotune.errors import UserError
from autotune.recipe import Recipe
from autotune.results import RunDirectory
from autotune.search import SearchRequest, search
from autotune.search.reporting import load_run
from autotune.search.reporting._figures import memory_plot

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


def _records(results):
    return [json.loads(line) for line in (results / "trials.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    """A whole search with confirmation and the written files, through the Python API."""
    tmp = tmp_path_factory.mktemp("search")
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    events = []
    outcome = search(SearchRequest(
        model="tests.toy_task:make_task", space=str(space), budget_bytes=16 * 10**9,
        trials=4, time_budget_s=180, seed=0, confirm_top=1, confirm_seeds=1,
        results_dir=str(tmp / "results"), output=str(tmp / "out" / "best.yaml"),
    ), on_event=lambda kind, payload: events.append((kind, payload)))
    return outcome, events


def test_the_outcome_names_the_winner_baseline_and_files(search_run):
    outcome, events = search_run
    assert outcome.no_winner is None
    assert outcome.best_recipe_path is not None and outcome.best_recipe_path.exists()
    best = outcome.summary.best
    assert best is not None and best.confirmed and best.seeds == [0, 1]
    assert outcome.summary.baseline.record.is_baseline
    kinds = [k for k, _ in events]
    assert kinds[0] == "plan"
    assert kinds.count("started") == kinds.count("finished") == len(outcome.records) >= 5
    assert "confirming" in kinds
    # the records of the outcome are the ones on disk, in order
    assert [r.to_json() for r in outcome.records] == _records(outcome.run_dir)


def test_every_trial_is_on_disk_with_recipe_and_measurements(search_run):
    outcome, _ = search_run
    everything = _records(outcome.run_dir)
    assert all(r["schema"] == 1 for r in everything)
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
        assert r["peak_memory_source"] == "cpu_tracked"  # a budget needs the measurement
        assert r["train_seconds"] > 0
    assert len({json.dumps(r["recipe"], sort_keys=True) for r in records}) == 4


def test_the_optuna_study_in_the_run_directory_holds_every_search_trial(search_run):
    outcome, _ = search_run
    storage = JournalStorage(JournalFileBackend(str(outcome.run_dir / "study.journal")))
    study = optuna.load_study(study_name="autotune", storage=storage)
    searched = [r for r in outcome.records if r.is_search_trial]
    assert len(study.trials) == len(searched) == 4
    for record in searched:
        trial = study.trials[record.study_trial]
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.value == pytest.approx(record.score)
        assert trial.user_attrs["recipe"] == record.recipe
        assert trial.user_attrs["status"] == record.status


def test_best_recipe_yaml_holds_recipe_measurements_and_speedup(search_run):
    outcome, _ = search_run
    output = outcome.best_recipe_path
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
    # The speedup is the baseline's median over the winner's median, as measured: recompute
    # both medians from the records on disk.
    by_trial = {}
    for r in _records(outcome.run_dir):
        if r["status"] == objective.REACHED:
            by_trial.setdefault(r["rerun_of"] or r["trial"], []).append(r["tta_seconds"])
    winner, baseline = by_trial[measured["trial"]], by_trial[1]
    median = sorted(baseline)[len(baseline) // 2] if len(baseline) % 2 else sum(baseline) / 2
    assert base["tta_seconds"] == pytest.approx(median)
    assert doc["speedup"] == pytest.approx(median / (sum(winner) / len(winner)), rel=1e-2)
    assert (outcome.run_dir / "search.yaml").exists()


def test_a_second_search_on_a_running_searchs_directory_is_refused(search_run):
    outcome, _ = search_run
    before = (outcome.run_dir / "trials.jsonl").read_text()
    with RunDirectory(outcome.run_dir).locked():  # as a search running there holds it
        with pytest.raises(UserError, match="another search is running"):
            search(SearchRequest(resume=str(outcome.run_dir), trials=6))
    assert (outcome.run_dir / "trials.jsonl").read_text() == before
    # a finished search's directory is not started again, it is resumed
    with pytest.raises(UserError, match="already holds a search.*--resume"):
        search(SearchRequest(model="tests.toy_task:make_task", results_dir=str(outcome.run_dir)))


def test_output_below_a_file_is_refused_before_any_trial(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    results = tmp_path / "results"
    code = main(["search", "--model", "tests.toy_task:make_task", "--trials", "1",
                 "--output", str(blocker / "best.yaml"), "--results-dir", str(results)])
    assert code == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert not (results / "trials.jsonl").exists()
    code = main(["search", "--model", "tests.toy_task:make_task", "--trials", "1",
                 "--results-dir", str(blocker / "run")])
    assert code == 2 and "is a file, not a folder" in capsys.readouterr().err


def test_every_flag_problem_is_reported_at_once(capsys):
    code = main(["search", "--model", "tests.toy_task:make_task", "--trials", "0",
                 "--budget", "lots", "--time-budget", "soon", "--confirm", "-1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "4 problems" in err
    for flag in ("--trials", "--budget", "--time-budget", "--confirm"):
        assert flag in err, flag


def test_unreachable_target_says_so_exits_3_and_keeps_what_was_measured(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    results = tmp_path / "results"
    code = main([
        "search", "--model", "tests.toy_task:make_task", "--space", str(space), "--target",
        "1.01", "--trials", "2", "--max-trial-time", "1s", "--results-dir", str(results),
    ])
    err = capsys.readouterr().err
    assert code == 3  # the search ran; no recipe reached the target
    assert "no trial reached the target accuracy >= 1.01" in err and "trials.jsonl" in err
    records = _records(results)
    assert len(records) == 2 and all(r["best_metric"] > 0.5 for r in records)
    # no memory budget: neither trials nor screening spent their setup measuring memory
    assert all(r["peak_memory_source"] == "not_measured" and r["peak_memory_bytes"] is None
               and r["predicted_peak_bytes"] is None for r in records)
    measured = [r for r in map(json.loads, (results / "screening.jsonl").open())
                if r["status"] == "ok"]
    assert measured and all(r["peak_memory_source"] == "not_measured" for r in measured)
    # and the report says why its memory plot is empty
    note = memory_plot(load_run(results)).note
    assert note and "not measured" in note and "--budget" in note, note
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
    for line in proc.stdout:  # progress lines arrive as trials start and end
        if line.startswith("[  2/20] running"):
            break
    time.sleep(1.0)  # trial 2 trains now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "search interrupted" in err and "trials.jsonl" in err
    records = _records(results)
    assert records[0]["status"] == objective.NOT_REACHED
    assert records[-1]["status"] == objective.INTERRUPTED


PARALLEL_SPACE = """\
model: toy
knobs:
  parallelism: {choices: [single, ddp, fsdp, zero2]}
  batch_size: {choices: [16, 32]}
"""


@pytest.mark.distributed
@pytest.mark.slow  # ~30 s; the default tier covers it (ctrl-c search test, parallel contracts)
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
    records = _records(results)
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
    # The baseline runs single, the warm start (the task's suggestion) ddp.
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  parallelism: {choices: [single, ddp]}\n")
    results = tmp_path / "results"
    main(["search", "--model", "tests.toy_task:make_crashing_task", "--space", str(space),
          "--task-option", 'suggest={"parallelism": "ddp", "workers": 2}', "--task-warm-start",
          "--trials", "2", "--max-trial-time", "1s", "--workers-per-trial", "2",
          "--confirm", "0", "--results-dir", str(results)])
    records = _records(results)
    assert len(records) == 2  # the search went on after the failure
    crashed = [r for r in records if r["recipe"]["parallelism"] == "ddp"]
    assert len(crashed) == 1
    assert crashed[0]["status"] == objective.ERROR
    assert "worker 1 on " in crashed[0]["message"] and "died" in crashed[0]["message"]
    assert [r["status"] for r in records if r["recipe"]["parallelism"] == "single"] == \
        [objective.NOT_REACHED]


@pytest.mark.slow  # ~30 s; a dead worker's test frees a trial's workers in the default tier
@pytest.mark.distributed
def test_early_stopped_multi_worker_trials_free_their_workers(tmp_path):
    """The scheduler stops losing ddp trials; their workers (Ray actors in the trial's placement
    group) must go with them, or the next trial waits forever for CPUs."""
    from tests.toy_task import make_task

    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  parallelism: {value: ddp}\n"
                     "  lr: {choices: [0.000001, 0.03]}\n  batch_size: {choices: [16, 32]}\n")
    request = SearchRequest(
        model="tests.toy_task:make_task", space=str(space),
        baseline=Recipe(parallelism="ddp", workers=2, lr=1e-6).to_dict(), target=1.01,
        max_trial_seconds=3.0, results_dir=str(tmp_path / "run"), trials=4, seed=0,
        report_interval_s=0.2, grace_period_s=0.3, workers_per_trial=2, confirm_top=0,
        screen=False,  # the subject is stopped trials' workers: Optuna draws both learning rates
    )
    assert make_task().target < request.target  # unreachable: only the scheduler stops early
    outcome = search(request)
    statuses = [r.status for r in outcome.records]
    assert len(statuses) == 4, statuses  # the search did not hang after a stopped trial
    assert objective.STOPPED in statuses, statuses
    for r in outcome.records:
        assert len(r.worker_nodes) == 2, r


def test_a_crashed_trial_process_is_recorded_and_the_search_goes_on(tmp_path):
    """A trial process killed by SIGKILL (the OOM killer, a segfault) fails that trial only."""
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  batch_size: {choices: [32, 64]}\n")
    results = tmp_path / "results"
    main(["search", "--model", "tests.toy_task:make_crashing_task", "--space", str(space),
          "--task-option", "crash_batch=64", "--task-option", 'suggest={"batch_size": 64}',
          "--task-warm-start", "--no-screen",  # the trial crashes, not a screening
          "--trials", "2", "--max-trial-time", "1s",
          "--confirm", "0", "--results-dir", str(results)])
    records = _records(results)
    assert sorted(r["recipe"]["batch_size"] for r in records) == [32, 64]
    crashed = next(r for r in records if r["recipe"]["batch_size"] == 64)
    assert crashed["status"] == objective.ERROR
    assert "died" in crashed["message"] or "exit" in crashed["message"], crashed["message"]
    assert next(r for r in records if r["recipe"]["batch_size"] == 32)["status"] == \
        objective.NOT_REACHED


def test_a_tight_budget_launches_no_trial_that_exceeds_it(tmp_path):
    """Recipes predicted over the budget are recorded as infeasible with their prediction, told
    to the study, and never launched; every launched trial's measured peak fits."""
    from autotune.memory import predict_peak
    from autotune.tasks import load_task

    task = load_task("tests.toy_task:make_task")
    small = predict_peak(task, Recipe(batch_size=32, lr=1e-2)).peak_bytes
    large = predict_peak(task, Recipe(batch_size=256, lr=1e-2)).peak_bytes
    assert large > 1.3 * small
    budget = int((small * 1.1 + large) / 2)
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  batch_size: {choices: [32, 256]}\n")
    # The baseline (32) runs first, the warm start (256) second, whatever the sampler draws.
    outcome = search(SearchRequest(
        model="tests.toy_task:make_task", task_options={"suggest": {"batch_size": 256}},
        task_warm_start=True,
        space=str(space), budget_bytes=budget, trials=2, screen=False,  # the trials' gate
        confirm_top=0, results_dir=str(tmp_path / "run")))
    refused = [r for r in outcome.records if not r.launched]
    launched = [r for r in outcome.records if r.launched]
    assert refused and launched
    for r in refused:
        assert r.recipe["batch_size"] == 256
        assert r.status == objective.INFEASIBLE and "not launched" in r.message
        assert r.predicted_peak_bytes > budget / 1.05
        assert r.steps is None and r.train_seconds is None  # nothing ran
    for r in launched:
        assert r.recipe["batch_size"] == 32
        assert r.peak_memory_bytes <= budget, r
        assert r.predicted_peak_bytes > 0 and abs(r.prediction_error) < 0.15
    storage = JournalStorage(JournalFileBackend(str(outcome.run_dir / "study.journal")))
    study = optuna.load_study(study_name="autotune", storage=storage)
    gated = [t for t in study.trials if t.user_attrs.get("launched") is False]
    assert len(gated) == len(refused)
    assert all(t.user_attrs["status"] == objective.INFEASIBLE for t in gated)


def test_a_missing_ray_is_named_with_the_install_command(tmp_path):
    """Importing the CLI and the search API needs neither Ray nor Optuna; a search without
    them says what to install instead of a traceback."""
    import subprocess
    import sys

    code = ("import sys\nsys.modules['ray'] = sys.modules['ray.tune'] = None\n"
            "sys.modules['optuna'] = None\nfrom autotune.cli import main\n"
            f"raise SystemExit(main(['search', '--model', 'tests.toy_task:make_task', "
            f"'--results-dir', {str(tmp_path / 'run')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "ray.tune, optuna, which is not installed" in proc.stderr
    assert "pip install 'ray[tune]' optuna" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()
