"""The multi-task search-quality benchmark's plumbing (``benchmarks.search_quality``).

The default tier checks what the benchmark decides without a real search: the oracle grids lie
in the spaces, a cached oracle is reused only where it is valid, every method gets the same
warm start and no task hints, the summaries and verdicts, and ``--smoke`` end to end with the
search call faked (a real Ray search does not fit the default tier's time on a 2-core CPU).
The ``slow`` test runs ``--smoke`` for real: three searches of the toy task.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from autotune import objective
from autotune.recipe import Recipe, baseline_recipe
from autotune.results import TrialRecord
from autotune.search import SearchRequest
from autotune.tasks import load_task
from benchmarks import search_quality as sq
from benchmarks.tasks.shapes import SHAPES, make_images, make_shapes_task, shape_masks
from tests.toy_task import make_toy_task

# -- the tasks and their oracle grids -----------------------------------------------------------


def test_the_benchmark_covers_the_three_built_ins_and_a_user_task_of_its_own():
    assert {"bert", "mnist", "gpt"} <= set(sq.TASKS) and len(sq.TASKS) >= 4
    own = [b for b in sq.TASKS.values() if ":" in b.model]
    assert own and all(b.model.startswith("benchmarks.tasks.") for b in own)


@pytest.mark.parametrize("name", ["mnist", "shapes"])
def test_each_grid_is_the_full_product_of_its_axes_and_lies_in_the_task_space(name):
    bench = sq.TASKS[name]
    task = load_task(bench.model, "cpu")
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    space = sq.task_space(task, bench.model)
    grid, dropped = sq.oracle_grid(bench, base, space)
    size = 1
    for _, values in bench.grid:
        size *= len(values)
    # only bf16 may be missing (a CPU without fast bf16 gets no bf16 in a generated space)
    assert set(dropped) <= {"precision=bf16"}
    assert len(grid) == (size // 2 if dropped else size) and len(set(grid)) == len(grid)
    for recipe in grid:
        space.point_for(recipe)  # raises if a search could never propose it


def test_a_grid_value_outside_the_space_is_left_out_and_named():
    task = load_task("mnist", "cpu")
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    bench = sq.BenchTask("m", "mnist", (("lr", (1e-3, 1.0)), ("batch_size", (32, 1000))), 5.0)
    grid, dropped = sq.oracle_grid(bench, base, sq.task_space(task, "mnist"))
    assert [(r.lr, r.batch_size) for r in grid] == [(1e-3, 32)]
    assert dropped == ["lr=1.0", "batch_size=1000"]


def test_the_shapes_task_is_deterministic_balanced_and_its_classes_differ():
    a, b = make_shapes_task(), make_shapes_task()
    assert all(x.equal(y) for x, y in zip(a.train, b.train))
    assert a.train[0].shape == (6000, 3, 24, 24) and a.validation[0].shape[0] == 1000
    counts = a.train[1].bincount(minlength=len(SHAPES))
    assert counts.min() > 900  # about 1,000 per class
    assert float(a.train[0].min()) >= 0.0 and float(a.train[0].max()) <= 1.0
    # the same centre and radius give a different pixel set for every shape
    grid = torch.arange(24, dtype=torch.float32) + 0.5
    dx, dy = grid[None, None, :] - 12.0, grid[None, :, None] - 12.0
    masks = [shape_masks(torch.tensor([[[[k]]]]), dx, dy, torch.tensor(8.0))
             for k in range(len(SHAPES))]
    assert len({tuple(m.flatten().tolist()) for m in masks}) == len(SHAPES)
    assert all(4 < int(m.sum()) < 24 * 24 for m in masks)  # each a shape, not empty or full
    images, labels = make_images(8, torch.Generator().manual_seed(0))
    assert images.shape == (8, 3, 24, 24) and labels.shape == (8,)


# -- the oracle cache ---------------------------------------------------------------------------


def _saved(info: dict[str, Any], grid: list[Recipe], seeds=(0, 1, 2), limit=5.0) -> dict:
    entries = [{"recipe": r.to_dict(), "median": 1.0 + i, "runs": [], "describe": r.describe()}
               for i, r in enumerate(grid)]
    return {"machine_key": sq.machine_key(info), "seeds": list(seeds), "limit_s": limit,
            "entries": entries, "best": entries[0], "measured_at": "then"}


def test_a_cached_oracle_is_reused_only_for_the_same_machine_grid_seeds_and_limit(tmp_path):
    info = sq.machine()
    base = baseline_recipe(32, 1e-3)
    grid = [base, base.replace(lr=2e-3)]
    path = tmp_path / "oracle_x.json"
    assert sq.cached_oracle(path, info, grid, (0, 1, 2), 5.0) is None  # nothing saved
    path.write_text(json.dumps(_saved(info, list(reversed(grid)))))
    assert sq.cached_oracle(path, info, grid, (0, 1, 2), 5.0) is not None  # order is no matter
    assert sq.cached_oracle(path, info, grid[:1], (0, 1, 2), 5.0) is None
    assert sq.cached_oracle(path, info, grid, (0,), 5.0) is None
    assert sq.cached_oracle(path, info, grid, (0, 1, 2), 6.0) is None
    other = {**info, "versions": {**info["versions"], "torch": "0.0"}}
    assert sq.cached_oracle(path, other, grid, (0, 1, 2), 5.0) is None


def test_the_saved_bert_oracle_matches_the_bert_grid():
    """The oracle measured before this benchmark grew (24 recipes, 29 min) stays valid."""
    saved = json.loads((sq.RESULTS / "oracle_bert.json").read_text())
    task = load_task("bert", "cpu")
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    grid, _ = sq.oracle_grid(sq.TASKS["bert"], base, sq.task_space(task, "bert"))
    assert sorted(json.dumps(Recipe.from_dict(e["recipe"]).to_dict(), sort_keys=True)
                  for e in saved["entries"]) == \
        sorted(json.dumps(r.to_dict(), sort_keys=True) for r in grid)
    assert saved["limit_s"] == sq.TASKS["bert"].oracle_limit_s


# -- the methods --------------------------------------------------------------------------------


@pytest.mark.parametrize("warm", [True, False])
def test_every_method_gets_the_same_warm_start_and_no_task_hints(tmp_path, warm):
    requests = {m: sq.search_request(sq.TASKS["shapes"], m, 1, 60.0, tmp_path / m, warm)
                for m in sq.METHODS}
    for r in requests.values():
        assert r.task_warm_start is False and r.warm_start is warm
        assert (r.time_budget_s, r.seed, r.device) == (60.0, 1, "cpu")
        r.check()
    shipped = SearchRequest()
    mine = requests["autotune"]
    assert (mine.sampler, mine.scheduler, mine.screen, mine.confirm_top) == (
        shipped.sampler, shipped.scheduler, shipped.screen, shipped.confirm_top)
    for other in ("tpe", "random"):
        r = requests[other]
        assert (r.scheduler, r.screen, r.confirm_top) == ("fifo", False, 0)
    assert (requests["tpe"].sampler, requests["random"].sampler) == ("tpe", "random")


def test_a_search_that_overruns_its_budget_by_more_than_5_percent_is_flagged(tmp_path,
                                                                            monkeypatch):
    def slow_search(request: SearchRequest) -> Any:
        time.sleep(0.3)
        return SimpleNamespace(summary=SimpleNamespace(best=None), records=[], wall_seconds=0.3)

    monkeypatch.setattr(sq, "search", slow_search)
    bench = sq.SMOKE_TASK
    late = sq.run_one_search(bench, "random", 0, 0.28, tmp_path, True)  # 0.3 > 0.28 x 1.05
    assert late["within_budget"] is False and late["winner"] is None
    assert late["wall_s"] >= 0.3 and late["search_wall_s"] == 0.3
    kept = sq.run_one_search(bench, "random", 1, 0.5, tmp_path, True)
    assert kept["within_budget"] is True


def test_a_run_that_misses_the_target_counts_as_the_limit():
    task = make_toy_task(target=1.01)  # never reached
    base = baseline_recipe(task.default_batch_size, task.default_lr)
    m = sq.measure_tta(task, base, (0,), limit=0.3)
    assert m["median"] == 0.3 and m["runs"][0]["tta"] is None
    assert m["runs"][0]["status"] == objective.NOT_REACHED


# -- summaries ----------------------------------------------------------------------------------


def _record(trial: int, tta: float | None, start: float, end: float, train: float) -> dict:
    status = objective.REACHED if tta is not None else objective.NOT_REACHED
    return TrialRecord(trial=trial, status=status, tta_seconds=tta, started_at=start,
                       finished_at=end, train_seconds=train, eval_seconds=0.5,
                       setup_seconds=0.5).to_json()


def _run(method: str, winner_tta: float | None, wall: float = 50.0, budget: float = 60.0,
         near: float | None = None) -> dict[str, Any]:
    run = {"method": method, "seed": 0, "start": 1000.0, "wall_s": wall, "budget_s": budget,
           "within_budget": wall <= budget * 1.05,
           "records": [_record(1, 30.0, 1000.0, 1020.0, 18.0),
                       _record(2, 8.0, 1020.0, 1040.0, 18.0)],
           "winner": {"lr": 1e-3}, "first_near_best_s": near}
    if winner_tta is not None:
        run["winner_remeasured"] = {"median": winner_tta}
    run["overhead"] = sq.overhead(run)
    return run


def test_first_near_best_is_the_first_trial_end_within_the_factor_of_the_oracle():
    run = _run("autotune", 8.0)
    assert sq.first_near_best(run, best=7.0) == pytest.approx(40.0)  # 8 <= 1.25 x 7
    assert sq.first_near_best(run, best=6.0) is None  # 8 > 7.5
    assert sq.first_near_best(run, best=30.0) == pytest.approx(20.0)  # the first one already


def test_overhead_is_the_wall_time_not_in_training_steps():
    parts = sq.overhead(_run("autotune", 8.0, wall=50.0))
    assert parts["training_steps"] == pytest.approx(36.0 / 50.0)
    assert parts["not_training"] == pytest.approx(14.0 / 50.0)
    assert parts["evaluation"] == pytest.approx(1.0 / 50.0)
    assert parts["driver_screening_and_ray"] == pytest.approx(10.0 / 50.0)
    assert parts["screening_steps"] == parts["start_and_screening_phase"] == 0.0  # none ran


def test_overhead_names_screenings_steps_and_phase():
    run = _run("autotune", 8.0, wall=50.0)
    run["start"] = 994.0  # screening from 994 to 1000, then the trials (1000-1040)
    run["screening"] = [{"status": "ok", "timed_seconds": 1.0, "warmup_seconds": 0.5,
                         "finished_at": 997.0},
                        {"status": "ok", "timed_seconds": 1.5, "warmup_seconds": 0.5,
                         "finished_at": 999.5},
                        {"status": "cut", "timed_seconds": 0.0, "warmup_seconds": 0.0,
                         "finished_at": 999.6}]
    parts = sq.overhead(run)
    assert parts["screening_steps"] == pytest.approx(3.5 / 50.0)
    assert parts["start_and_screening_phase"] == pytest.approx(5.6 / 50.0)


def test_a_task_table_compares_the_winners_and_counts_a_search_without_one_as_the_limit():
    oracle = {"best": {"median": 10.0}, "limit_s": 40.0}
    runs = [_run("autotune", 11.0, near=30.0), _run("autotune", 12.0, near=None),
            _run("autotune", 13.0, near=50.0, wall=70.0),
            _run("random", 20.0), _run("random", None), _run("random", 24.0),
            _run("tpe", 12.0), _run("tpe", 15.0), _run("tpe", 18.0)]
    table = sq.summarize_task(runs, oracle)
    mine = table["autotune"]
    assert mine["winner_tta_median"] == 12.0 and mine["ratio_to_oracle_best"] == 1.2
    assert table["random"]["winner_ttas"] == [20.0, 40.0, 24.0]
    assert mine["speedup_vs"] == {"random": 2.0, "tpe": 1.25}
    assert mine["first_near_best_median_s"] == 50.0  # never counts as infinitely late
    assert mine["within_budget"] == [True, True, False]
    assert mine["wall_over_budget_max"] == pytest.approx(70.0 / 60.0)
    sq.print_task("t", table, {**oracle, "best": {"median": 10.0, "describe": "x"}}, "1m")


def test_the_verdicts_follow_issue_13s_done_when():
    def table(x_oracle: float, vs_random: float, not_training: float = 0.1,
              in_budget: bool = True) -> dict[str, Any]:
        mine = {"ratio_to_oracle_best": x_oracle, "speedup_vs": {"random": vs_random},
                "first_near_best_median_s": 10.0, "not_training_median": not_training,
                "within_budget": [True]}
        return {"autotune": mine, "random": {"within_budget": [in_budget]}}

    good = sq.summary({"a": table(1.1, 1.3), "b": table(1.2, 1.25), "c": table(1.0, 1.0)})
    assert all(good["verdicts"].values()), good["verdicts"]
    sq.print_summary(good)
    cases = {
        "within_oracle_every_task": {"a": table(1.21, 1.3), "b": table(1.0, 1.3)},
        "faster_than_random_on_two": {"a": table(1.0, 1.3), "b": table(1.0, 1.24)},
        "never_slower_than_random": {"a": table(1.0, 1.3), "b": table(1.0, 1.3),
                                     "c": table(1.0, 0.99)},
        "overhead_under_15pct": {"a": table(1.0, 1.3), "b": table(1.0, 1.3, 0.15)},
        "every_search_in_budget": {"a": table(1.0, 1.3), "b": table(1.0, 1.3, in_budget=False)},
    }
    alone = sq.summary({"a": {"autotune": {**table(1.0, 1.3)["autotune"], "speedup_vs": {}}}})
    assert alone["verdicts"]["faster_than_random_on_two"] is None  # not run: not judged
    assert alone["verdicts"]["never_slower_than_random"] is None
    sq.print_summary(alone)
    for goal, tables in cases.items():
        verdicts = sq.summary(tables)["verdicts"]
        assert [g for g, ok in verdicts.items() if not ok] == [goal], (goal, verdicts)


def test_results_of_one_task_at_a_time_accumulate():
    first = {"tasks": {"a": {"searches": 1, "oracle_best": 1}}, "throughput": [1], "old": 0}
    second = sq.merge_results(first, {"tasks": {"b": {"searches": 2}, "a": {"oracle_best": 3}},
                                      "date": "now"})
    assert second["tasks"] == {"a": {"searches": 1, "oracle_best": 3}, "b": {"searches": 2}}
    assert second["throughput"] == [1] and second["date"] == "now" and "old" not in second


def test_a_rerun_of_some_methods_keeps_the_others_searches_at_the_same_budget():
    runs = [{"method": m, "seed": s, "trials": 3} for m in ("autotune", "tpe", "random")
            for s in (0, 1)]
    previous = {"warm_start": "rules", "tasks": {"a": {"budget": "3m", "runs": runs}}}
    args = SimpleNamespace(budget="3m", warm_start="rules", methods=["autotune"],
                           search_seeds=[0, 1])
    kept = sq.kept_runs(previous, "a", args)
    assert [(r["method"], r["seed"]) for r in kept] == [
        ("tpe", 0), ("tpe", 1), ("random", 0), ("random", 1)]
    args.search_seeds = [1]  # autotune's seed 0 is not redone: kept
    assert ("autotune", 0) in [(r["method"], r["seed"]) for r in sq.kept_runs(
        previous, "a", args)]
    for change in ({"budget": "5m"}, {"warm_start": "none"}):  # not comparable: none kept
        assert sq.kept_runs(previous, "a", SimpleNamespace(**{**vars(args), **change})) == []
    assert sq.kept_runs(previous, "b", args) == []


# -- --smoke end to end -------------------------------------------------------------------------


def test_smoke_runs_the_whole_benchmark_with_the_search_call_faked(tmp_path, monkeypatch):
    """Real oracle (2 recipes of the toy task), real re-measurement, tables and JSON; the search
    is a stand-in that returns the baseline as its winner after one trial."""
    requests: list[SearchRequest] = []

    def fake_search(request: SearchRequest) -> Any:
        requests.append(request)
        now = time.time()
        recipe = baseline_recipe(32, 1e-2).to_dict()
        record = TrialRecord(trial=1, status=objective.REACHED, tta_seconds=0.2, recipe=recipe,
                             started_at=now, finished_at=now + 0.5, train_seconds=0.3)
        best = SimpleNamespace(record=record, tta_seconds=0.2)
        return SimpleNamespace(summary=SimpleNamespace(best=best), records=[record],
                               wall_seconds=0.5)

    monkeypatch.setattr(sq, "search", fake_search)
    out_file = tmp_path / "out.json"
    start = time.time()
    out = sq.main(["--smoke", "--oracle-dir", str(tmp_path), "--out", str(out_file)])
    assert time.time() - start < 60
    assert [(r.model, r.sampler, r.task_warm_start, r.warm_start) for r in requests] == [
        ("tests.toy_task:make_task", "tpe", False, True),
        ("tests.toy_task:make_task", "tpe", False, True),
        ("tests.toy_task:make_task", "random", False, True)]
    oracle = json.loads((tmp_path / "oracle_toy.json").read_text())
    assert len(oracle["entries"]) == 2 and oracle["seeds"] == [0]
    toy = json.loads(out_file.read_text())["tasks"]["toy"]
    assert set(toy["searches"]) == set(sq.METHODS)
    assert [[x["seed"] for x in r["winner_remeasured"]["runs"]] for r in toy["runs"]] == \
        [[100]] * 3  # fresh seeds, not the search's or the oracle's
    assert all(r["within_budget"] for r in toy["runs"])
    assert set(out["summary"]["tasks"]) == {"toy"}
    # a second run reuses the oracle (same machine, grid, seeds, limit)
    (tmp_path / "oracle_toy.json").write_text(json.dumps({**oracle, "measured_at": "MARK"}))
    sq.main(["--smoke", "--oracle-dir", str(tmp_path), "--out", str(out_file),
             "--methods", "random"])
    assert json.loads((tmp_path / "oracle_toy.json").read_text())["measured_at"] == "MARK"


def test_the_command_line_defaults_are_the_issue_s():
    args = sq.parse_args([])
    assert [b.name for b in args.benches] == list(sq.TASKS)
    assert args.search_seeds == [0, 1, 2] and args.budget == "5m"
    assert args.methods == list(sq.METHODS) and args.warm_start == "rules"
    assert Path(args.out) == sq.RESULTS / "search_quality.json"
    smoke = sq.parse_args(["--smoke"])
    assert [b.name for b in smoke.benches] == ["toy"] and smoke.search_seeds == [0]
    assert Path(smoke.oracle_dir) != sq.RESULTS  # never overwrites a real oracle


@pytest.mark.slow
def test_smoke_for_real_runs_three_searches_and_reports_them(tmp_path):
    out = sq.main(["--smoke", "--oracle-dir", str(tmp_path), "--out", str(tmp_path / "o.json"),
                   "--budget", "20s"])
    toy = out["tasks"]["toy"]
    assert set(toy["searches"]) == set(sq.METHODS)
    for run in toy["runs"]:
        assert run["winner"] is not None and run["overhead"]["not_training"] > 0
