"""Screening: each system configuration's speed and memory measured in timed steps
(``autotune.train.screen``), the configurations of a space, the keep rule, the restricted
space and its warm start (``autotune.search.screening``), and a real small search whose
convergence trials run on the kept configurations only, and which a resume reuses."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import optuna
import pytest
import yaml

from autotune.errors import ConfigError
from autotune.recipe import Recipe
from autotune.results import CUT, REFUSED, RunDirectory, ScreenRecord
from autotune.search import SearchRequest, search
from autotune.search._run import search_times
from autotune.search.screening import (
    ABANDON_SHARE,
    MIN_SPEED_SHARE,
    abandon_floor,
    config_label,
    decide,
    kept_warm_starts,
    screens,
    spread_sample,
    system_configs,
    system_knob_names,
)
from autotune.search.settings import SCREEN_SHARE
from autotune.space import SYSTEM_PARAM, parse_space
from autotune.tasks import load_task
from autotune.train.screen import (
    DEFAULT_WARMUP_STEPS,
    INFEASIBLE,
    NOT_SCREENED,
    OK,
    SLOW,
    UNSUPPORTED,
    best_window_rate,
    screen,
)
from autotune.warm_start import LR_BATCH_EXPONENT, WARMUP_STEPS

# -- the measurement ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist():
    # Evaluation in batches of 8: the training step is the peak these tests compare.
    return dataclasses.replace(load_task("mnist", "cpu", {}), eval_batch_size=8)


def test_a_larger_batch_moves_more_examples_per_second_and_holds_more_memory(mnist):
    small = screen(mnist, Recipe(batch_size=4, lr=1e-3), "cpu", seconds=0.3, max_steps=10)
    large = screen(mnist, Recipe(batch_size=128, lr=1e-3), "cpu", seconds=0.3, max_steps=10)
    assert small.status == large.status == OK, (small.message, large.message)
    # 32x the examples per step: per-step costs (the optimizer, Python, kernel launches) are
    # shared by 32x more examples
    assert large.examples_per_second > small.examples_per_second
    assert large.peak_memory_bytes > small.peak_memory_bytes
    assert large.peak_memory_source == "cpu_tracked"
    assert small.warmup_steps == DEFAULT_WARMUP_STEPS and small.steps >= 3
    assert small.mean_examples_per_second == pytest.approx(
        4 * small.steps / small.timed_seconds)
    # the best window of the timed steps is at least their mean
    assert small.examples_per_second >= small.mean_examples_per_second


def test_bf16_and_fp32_are_measured_apart(mnist):
    fp32 = screen(mnist, Recipe(batch_size=32), "cpu", seconds=0.2, max_steps=5,
                  warmup_steps=1)
    bf16 = screen(mnist, Recipe(batch_size=32, precision="bf16"), "cpu", seconds=0.2,
                  max_steps=5, warmup_steps=1)
    assert fp32.status == bf16.status == OK
    assert fp32.examples_per_second != bf16.examples_per_second
    # bf16 autocast keeps 16-bit activations: the tracked peak is smaller (deterministic)
    assert bf16.peak_memory_bytes < fp32.peak_memory_bytes


def test_a_moment_of_preemption_is_left_out_a_recurring_stall_is_not():
    steady = [0.01] * 40
    preempted = steady[:5] + [0.5] + steady[6:]  # one step waited for another process
    assert best_window_rate(preempted, 10) == pytest.approx(1000.0)
    stalling = [0.01, 0.03] * 20  # every other step waits for the DataLoader
    assert best_window_rate(stalling, 10) == pytest.approx(500.0)
    assert best_window_rate([0.02, 0.5], 10) == pytest.approx(20 / 0.52)  # one window


def test_what_cannot_run_is_a_status_not_an_exception(toy_task):
    assert screen(toy_task, Recipe(tf32=True), "cpu").status == UNSUPPORTED  # no TF32 on a CPU
    parallel = screen(toy_task, Recipe(parallelism="ddp", workers=2), "cpu")
    assert parallel.status == NOT_SCREENED and "convergence trials" in parallel.message
    over = screen(toy_task, Recipe(batch_size=64), "cpu", seconds=0.1, budget_bytes=1000)
    assert over.status == INFEASIBLE and "exceeds the budget" in over.message
    assert over.peak_memory_bytes > 1000


def test_a_step_slower_than_the_timed_seconds_ends_warm_up_and_timing_at_once(toy_task):
    """A configuration whose one step takes longer than all its timed seconds (fp16 on a CPU
    without fp16 arithmetic) is measured from one warm-up and one timed step, not 2 + 3."""
    import time as _time

    def slow_loss(model, batch):
        _time.sleep(0.15)
        return toy_task.loss(model, batch)

    slow = dataclasses.replace(toy_task, loss=slow_loss)
    result = screen(slow, Recipe(batch_size=16), "cpu", seconds=0.1)
    assert result.status == OK and (result.warmup_steps, result.steps) == (1, 1)
    assert result.examples_per_second == pytest.approx(16 / result.timed_seconds)
    quick = screen(toy_task, Recipe(batch_size=16), "cpu", seconds=0.1)
    assert quick.warmup_steps == DEFAULT_WARMUP_STEPS and quick.steps >= 3


def test_a_warm_up_step_under_the_floor_ends_the_measurement_before_memory(toy_task):
    """A configuration far slower than the fastest measured so far (``floor``) stops after
    one warm-up step: no timed steps and no memory measurement, which on a CPU are the most
    of a slow configuration's screening (fp16 on bert: 15.6 s)."""
    import time as _time

    def slow_loss(model, batch):
        _time.sleep(0.05)
        return toy_task.loss(model, batch)

    slow = dataclasses.replace(toy_task, loss=slow_loss)
    stopped = screen(slow, Recipe(batch_size=16), "cpu", seconds=0.2, floor=1000.0)
    assert stopped.status == SLOW and "under the floor of 1000.0" in stopped.message
    assert (stopped.warmup_steps, stopped.steps) == (1, 0)
    assert stopped.peak_memory_bytes is None  # the memory measurement was skipped
    assert 0 < stopped.examples_per_second < 16 / 0.05
    # under a floor it passes, it is measured in full, memory included
    measured = screen(slow, Recipe(batch_size=16), "cpu", seconds=0.2, floor=10.0)
    assert measured.status == OK and measured.steps >= 3
    assert measured.peak_memory_bytes and measured.peak_memory_source == "cpu_tracked"


def test_screening_without_a_budget_may_skip_the_memory_measurement(toy_task):
    """``track_memory=False`` (a search without a budget) skips a CPU configuration's tracked
    steps; with a budget they run regardless, since the budget is checked against them."""
    skipped = screen(toy_task, Recipe(batch_size=16), "cpu", seconds=0.1, track_memory=False)
    assert skipped.status == OK and skipped.steps >= 3
    assert skipped.peak_memory_bytes is None and skipped.peak_memory_source == "not_measured"
    kept = screen(toy_task, Recipe(batch_size=16), "cpu", seconds=0.1, track_memory=False,
                  budget_bytes=10**12)
    assert kept.status == OK and kept.peak_memory_source == "cpu_tracked"
    assert kept.peak_memory_bytes > 0


def test_the_floor_is_a_share_of_the_fastest_measured_so_far():
    assert abandon_floor([]) is None
    records = [_rec(0, 32, 400.0, 10), _rec(1, 64, 1000.0, 20),
               _rec(2, 16, 5000.0, 5, status="error")]
    assert abandon_floor(records) == pytest.approx(ABANDON_SHARE * 1000.0)
    # a configuration stopped there would have been dropped after a full measurement too
    assert ABANDON_SHARE < MIN_SPEED_SHARE


@pytest.mark.slow
def test_compile_time_is_reported_apart_from_the_throughput(mnist):
    result = screen(mnist, Recipe(batch_size=64, compile="default"), "cpu", seconds=0.5,
                    max_steps=30)
    assert result.status == OK, result.message
    assert result.compile_seconds > 1.0  # the first steps compile...
    assert result.warmup_seconds >= result.compile_seconds
    assert result.timed_seconds < result.compile_seconds  # ...and the timed ones do not


# -- the configurations ---------------------------------------------------------------------

CONDITIONS = """\
knobs:
  precision: {choices: [fp32, bf16]}
  batch_size: {choices: [16, 32]}
  optimizer: {choices: [adamw, sgd]}
  dataloader_workers: {choices: [0, 2]}
  prefetch_factor: {choices: [2, 4], when: {dataloader_workers: [2]}}
  checkpointing: {choices: [false, true], when: {optimizer: [sgd]}}
  lr: {low: 1.0e-3, high: 1.0e-2, log: true}
"""


def test_configurations_are_the_combinations_of_system_knobs_with_conditions():
    space = parse_space(CONDITIONS)
    # checkpointing depends on an optimisation knob: left to the convergence trials
    assert system_knob_names(space) == ["precision", "batch_size", "dataloader_workers",
                                        "prefetch_factor"]
    configs = system_configs(space, Recipe(), workers_per_trial=1)
    # 2 precisions x 2 batches x (no workers, or 2 workers x 2 prefetch depths)
    assert len(configs) == 2 * 2 * 3 == len({c.label for c in configs})
    assert configs[0].is_baseline and configs[0].recipe == Recipe()
    assert sum(c.is_baseline for c in configs) == 1
    assert all("prefetch_factor" not in c.values for c in configs
               if c.values["dataloader_workers"] == 0)
    assert {c.recipe.prefetch_factor for c in configs
            if c.values["dataloader_workers"] == 2} == {2, 4}


def test_a_spread_sample_starts_at_the_baseline_and_covers_every_value():
    space = parse_space("""\
knobs:
  precision: {choices: [fp32, bf16, fp16]}
  batch_size: {choices: [16, 32, 64, 128, 256]}
  fused_optimizer: {choices: [default, foreach, fused]}
  channels_last: {choices: [false, true]}
""")
    configs = system_configs(space, Recipe(), 1)
    assert len(configs) == 90
    sample = spread_sample(configs, limit=8)
    assert len(sample) == 8 and sample[0] is configs[0]
    for knob, values in (("precision", 3), ("batch_size", 5), ("fused_optimizer", 3),
                         ("channels_last", 2)):
        assert len({c.values[knob] for c in sample}) == values, knob
    assert spread_sample(configs[:5], limit=8) == configs[:5]


# -- the decision ---------------------------------------------------------------------------


def _rec(order, batch, speed, memory, status=OK, precision="fp32", baseline=False, **extra):
    config = {"precision": precision, "batch_size": batch, **extra}
    recipe = Recipe(precision=precision, batch_size=batch,
                    **{k: v for k, v in extra.items()}).to_dict()
    return ScreenRecord(config_label(config), config, status, recipe, baseline, order,
                        examples_per_second=speed, peak_memory_bytes=memory)


def test_dominated_and_slow_configurations_are_dropped_the_baseline_kept():
    records = [
        _rec(0, 32, 100.0, 1000, baseline=True),          # the slowest: kept as reference
        _rec(1, 32, 300.0, 900, precision="bf16"),        # dominates the baseline
        _rec(2, 64, 500.0, 2000),                          # fastest
        _rec(3, 64, 450.0, 1500, precision="bf16"),       # slower, less memory: not dominated
        _rec(4, 16, 200.0, 950),                           # another batch: not dominated
        _rec(5, 128, None, None, status=REFUSED),
        _rec(6, 128, None, None, status=INFEASIBLE, precision="bf16"),
        _rec(7, 16, None, None, status=CUT, precision="bf16"),
        _rec(8, 64, 440.0, 2500, precision="fp16"),       # dominated by the fp32 one
    ]
    decisions = {d.label: d for d in decide(records, keep_top=3)}
    kept = [r.order for r in records if decisions[r.label].kept]
    assert kept == [0, 1, 2, 4]  # the fastest of each micro-batch, and the baseline's
    base = decisions[records[0].label]
    assert "baseline" in base.reason and "dominated" in base.reason
    assert "dominated by #1" in decisions[records[8].label].reason
    assert "kept for micro-batch 64" in decisions[records[3].label].reason
    assert "memory gate" in decisions[records[5].label].reason
    assert decisions[records[6].label].reason.startswith("infeasible")
    assert "time budget" in decisions[records[7].label].reason
    assert decisions[records[2].label].rank == 1
    # the ranking: kept first, fastest first
    assert [d.label for d in decide(records, keep_top=3)][:4] == [
        records[i].label for i in (2, 1, 4, 0)]
    # at most keep_top in all (the baseline's besides), the fastest first
    capped = {d.label: d for d in decide(records, keep_top=2)}
    assert [r.order for r in records if capped[r.label].kept] == [0, 1, 2]
    assert "slower than the 2 kept" in capped[records[4].label].reason


def test_each_micro_batch_keeps_its_fastest_configuration():
    """A small CNN on a CPU: the larger the micro-batch, the more examples per second, in
    either precision. Its oracle's best recipe trains at micro-batch 32, which accumulation
    (it only multiplies the micro-batch) cannot reach from larger ones: every micro-batch
    size keeps its fastest configuration, the baseline's (64) among them."""
    records = [
        _rec(0, 64, 12600.0, 2000, baseline=True),
        _rec(1, 32, 9600.0, 1000),
        _rec(2, 32, 8000.0, 1100, precision="bf16"),  # slower and more memory: dominated
        _rec(3, 64, 11600.0, 1900, precision="bf16"),
        _rec(4, 128, 15400.0, 4000),
        _rec(5, 256, 17300.0, 8000),
        _rec(6, 256, 17100.0, 7000, precision="bf16"),
    ]
    decisions = {d.label: d for d in decide(records)}
    kept = {r.config["batch_size"]: r.config["precision"] for r in records
            if decisions[r.label].kept}
    assert kept == {32: "fp32", 64: "fp32", 128: "fp32", 256: "fp32"}
    assert "kept for micro-batch 256" in decisions[records[6].label].reason
    assert "kept for micro-batch 64" in decisions[records[3].label].reason


def test_a_configuration_far_slower_than_the_fastest_is_dropped_though_in_the_top():
    """fp16 on a CPU (no fp16 arithmetic) at 1/18 of bf16's speed, the only batch-64
    configuration measured: not dominated and third by throughput, but it would need 18x
    fewer examples to win; the baseline's configuration is kept all the same."""
    records = [
        _rec(0, 32, 500.0, 1000, baseline=True),
        _rec(1, 32, 745.0, 900, precision="bf16"),
        _rec(2, 64, 40.0, 2000, precision="fp16"),
        _rec(3, 16, 190.0, 700),  # just over a quarter of the fastest: kept
    ]
    decisions = {d.label: d for d in decide(records, keep_top=3)}
    assert [r.order for r in records if decisions[r.label].kept] == [0, 1, 3]
    assert "under 25% of the fastest's 745" in decisions[records[2].label].reason


def test_a_multi_worker_configuration_follows_its_single_device_one():
    records = [
        _rec(0, 32, 100.0, 1000, baseline=True, parallelism="single"),
        _rec(1, 32, 300.0, 900, precision="bf16", parallelism="single"),
        _rec(2, 32, None, None, status="not_screened", precision="bf16", parallelism="ddp",
             workers=2),
        _rec(3, 16, 50.0, 500, parallelism="single"),
        _rec(4, 16, None, None, status="not_screened", parallelism="ddp", workers=2),
    ]
    decisions = {d.label: d for d in decide(records, keep_top=1)}
    assert decisions[records[2].label].kept
    assert not decisions[records[4].label].kept


# -- the restricted space and its warm start ------------------------------------------------

TOY_SPACE = """\
model: toy
knobs:
  precision: {choices: [fp32, bf16]}
  batch_size: {choices: [16, 32, 64]}
  optimizer: {choices: [adamw, sgd]}
  lr: {low: 1.0e-3, high: 3.0e-2, log: true, when: {optimizer: adamw}}
  lr@sgd: {low: 0.01, high: 0.3, log: true, when: {optimizer: sgd}}
  warmup_steps: {choices: [0, 5, 100]}
  grad_clip: {choices: [0.0, 1.0], when: {precision: [bf16]}}
"""


def test_the_restricted_space_proposes_only_kept_configurations():
    space = parse_space(TOY_SPACE)
    baseline = Recipe(batch_size=32, lr=1e-2)
    configs = system_configs(space, baseline, 1)
    kept = [c for c in configs if c.values in ({"precision": "fp32", "batch_size": 32},
                                               {"precision": "bf16", "batch_size": 64})]
    names = system_knob_names(space)
    restricted = space.restrict_to_systems(names, [(c.label, c.values) for c in kept])
    assert [k.knob for k in restricted.knobs] == ["optimizer", "lr", "lr", "warmup_steps",
                                                  "grad_clip"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        params = restricted.suggest(trial)
        recipe = restricted.to_recipe(params, baseline)
        seen.add((recipe.precision, recipe.batch_size))
        # a knob conditioned on a system knob follows the configuration drawn
        assert ("grad_clip" in params) == (recipe.precision == "bf16")
        assert restricted.point_for(recipe) == params
        study.tell(trial, 0.0)
    assert seen == {("fp32", 32), ("bf16", 64)}
    assert restricted.point_for(baseline)[SYSTEM_PARAM] == kept[0].label
    with pytest.raises(ConfigError, match="kept"):
        restricted.point_for(baseline.replace(batch_size=16))


def test_each_kept_configuration_warm_starts_with_the_lr_following_its_batch(tmp_path):
    space = parse_space(TOY_SPACE)
    baseline = Recipe(batch_size=32, lr=1e-2)
    configs = system_configs(space, baseline, 1)
    kept = [c for c in configs if c.values["batch_size"] != 32 or c.is_baseline]
    plan = SimpleNamespace(space=space, baseline=baseline)  # what kept_warm_starts reads
    warm = kept_warm_starts(plan, kept, space)
    by_config = {(w.recipe.precision, w.recipe.batch_size): w.recipe for w in warm}
    assert set(by_config) == {(p, b) for p in ("fp32", "bf16") for b in (16, 64)}
    larger, smaller = by_config[("bf16", 64)], by_config[("fp32", 16)]
    assert larger.lr == pytest.approx(1e-2 * 2 ** LR_BATCH_EXPONENT["adamw"])
    assert larger.warmup_steps == WARMUP_STEPS  # a raised learning rate comes with warmup
    assert smaller.lr == pytest.approx(1e-2 / 2 ** LR_BATCH_EXPONENT["adamw"])
    assert smaller.warmup_steps == 0




def test_screening_takes_its_share_of_the_time_budget_from_the_search_phase():
    times = search_times(0.0, 400.0, confirming=True, grace_s=5.0, screening=True)
    assert times.screening_end == pytest.approx(400.0 * SCREEN_SHARE)
    assert times.proposals_end == search_times(0.0, 400.0, True, 5.0).proposals_end
    assert search_times(0.0, 400.0, True, 5.0).screening_end is None


# -- a real search --------------------------------------------------------------------------

SEARCH_SPACE = """\
model: toy
knobs:
  precision: {choices: [fp32, bf16]}
  batch_size: {choices: [16, 32, 64]}
  optimizer: {choices: [adamw, sgd]}
  lr: {low: 1.0e-3, high: 3.0e-2, log: true, when: {optimizer: adamw}}
  lr@sgd: {low: 0.01, high: 0.3, log: true, when: {optimizer: sgd}}
"""
BUDGET = 30_000
"""Bytes: the toy MLP's fp32 recipe at batch 64 is predicted over it (with the gate's margin),
its other configurations under."""


@pytest.fixture(scope="module")
def screened_search(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("screened")
    space = tmp / "space.yaml"
    space.write_text(SEARCH_SPACE)
    events = []
    request = SearchRequest(
        model="tests.toy_task:make_task", task_options={"eval_batch_size": 32},
        space=str(space), budget_bytes=BUDGET, trials=4,
        time_budget_s=150, confirm_top=0, results_dir=str(tmp / "results"))
    outcome = search(request, on_event=lambda kind, payload: events.append((kind, payload)))
    return outcome, events


def test_convergence_trials_run_on_the_kept_configurations_only(screened_search):
    outcome, events = screened_search
    run_dir = RunDirectory(outcome.run_dir)
    screened = run_dir.screen_records()
    assert len(screened) == 6
    by_config = {(r.config["precision"], r.config["batch_size"]): r for r in screened}
    # the memory gate refused fp32 at batch 64 before any run: no measurement at all
    refused = by_config[("fp32", 64)]
    assert refused.status == REFUSED and refused.steps == 0 and refused.predicted_peak_bytes
    measured = [r for r in screened if r.status == OK]
    assert measured and all(r.examples_per_second > 0 and r.peak_memory_bytes for r in measured)
    assert by_config[("fp32", 32)].is_baseline and by_config[("fp32", 32)].order == 0
    decisions = {d.label: d for d in dict(events)["screened"]["decisions"]}
    kept = {(r.config["precision"], r.config["batch_size"]) for r in screened
            if decisions[r.label].kept}
    assert ("fp32", 32) in kept and ("fp32", 64) not in kept and len(kept) <= 4
    for record in outcome.records:
        assert (record.recipe["precision"], record.recipe["batch_size"]) in kept
        assert set(record.params) - {SYSTEM_PARAM} <= {"optimizer", "lr", "lr@sgd"}
    assert outcome.records[0].is_baseline
    # the warm start: each kept configuration with the baseline's optimisation knobs
    warm = [r for r in outcome.records if r.warm_start_name
            and r.warm_start_name.startswith("screened")]
    assert {(r.recipe["precision"], r.recipe["batch_size"]) for r in warm} <= kept
    # search.yaml says what was screened and kept
    doc = yaml.safe_load((outcome.run_dir / "search.yaml").read_text())["search"]["screening"]
    assert doc["configurations"] == 6 and doc["kept"] == len(kept)
    assert sum(row["kept"] for row in doc["results"]) == len(kept)
    assert all(row["why"] for row in doc["results"])
    kinds = [k for k, _ in events]
    assert kinds.index("screening") < kinds.index("screened") < kinds.index("started")
    assert kinds.count("screened_one") == 6


@pytest.mark.slow
def test_a_resumed_search_reuses_its_screening(screened_search):
    outcome, _ = screened_search
    path = outcome.run_dir / "screening.jsonl"
    before = path.read_text()
    events = []
    again = search(SearchRequest(resume=str(outcome.run_dir)),
                   on_event=lambda kind, payload: events.append((kind, payload)),
                   given={"trials": 5})
    assert path.read_text() == before  # nothing measured again
    assert dict(events)["screening"]["to_measure"] == 0
    assert len([r for r in again.records if r.is_search_trial]) == 5
    kept = {r.label for r in again.plan.run_dir.screen_records()
            if any(d.label == r.label and d.kept for d in dict(events)["screened"]["decisions"])}
    last = again.records[-1]
    assert last.params[SYSTEM_PARAM] in kept
    lines = [json.loads(x) for x in before.splitlines()]
    assert all(x["schema"] == 1 for x in lines)


def test_screening_is_off_when_asked_or_with_one_configuration():
    space = parse_space("knobs:\n  lr: {low: 1.0e-3, high: 1.0e-2}\n")
    assert len(system_configs(space, Recipe(), 1)) == 1
    configs = system_configs(parse_space(TOY_SPACE), Recipe(batch_size=32), 1)
    assert screens(SimpleNamespace(request=SearchRequest()), configs)
    assert not screens(SimpleNamespace(request=SearchRequest(screen=False)), configs)
    assert not screens(SimpleNamespace(request=SearchRequest()), configs[:1])


def _batch_32_and_64_search(tmp_path, model: str, options: dict):
    """A one-trial search of the toy task over batch sizes 32 (the baseline's, screened
    first) and 64; its outcome and screening records by batch size."""
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  batch_size: {choices: [32, 64]}\n")
    outcome = search(SearchRequest(
        model=model, task_options=options, space=str(space), trials=1, time_budget_s=120,
        confirm_top=0, results_dir=str(tmp_path / "run")))
    return outcome, {r.config["batch_size"]: r
                     for r in RunDirectory(outcome.run_dir).screen_records()}


@pytest.mark.slow
def test_a_configuration_whose_process_dies_is_an_error_and_dropped(tmp_path):
    # the toy task's process is SIGKILLed (as by the OOM killer) at a batch of 64
    outcome, records = _batch_32_and_64_search(tmp_path, "tests.toy_task:make_crashing_task",
                                               {"crash_batch": 64})
    assert records[64].status == "error" and records[32].status == OK
    assert len(records) == 2
    assert outcome.records[0].recipe["batch_size"] == 32


@pytest.mark.slow
def test_a_configuration_far_slower_than_one_measured_before_it_stops_slow(tmp_path):
    # batch 64 takes 0.3 s a step more (fakes slow hardware); the baseline's 32 goes first
    _, records = _batch_32_and_64_search(tmp_path, "tests.toy_task:make_task",
                                         {"slow_batch": 64})
    assert records[32].status == OK and records[32].is_baseline
    slow = records[64]
    assert slow.status == SLOW and slow.steps == 0 and slow.peak_memory_bytes is None
    assert f"floor of {ABANDON_SHARE * records[32].examples_per_second:.1f}" in slow.message
    decisions = {d.label: d for d in decide(list(records.values()))}
    assert not decisions[slow.label].kept and decisions[slow.label].reason.startswith("slow:")


def test_the_plan_line_says_the_warm_start_waits_for_screening(screened_search):
    """Before the first trial the search prints its plan; when it screens, the warm start is
    chosen from the kept configurations later, so the plan must not name the unscreened one."""
    from autotune.report import plan_lines

    _, events = screened_search
    plan = next(payload for kind, payload in events if kind == "plan")
    assert screens(plan)
    text = "\n".join(plan_lines(plan))
    assert "warm start after the baseline: chosen after screening" in text
    unscreened = dataclasses.replace(plan, request=dataclasses.replace(plan.request,
                                                                       screen=False))
    assert not screens(unscreened)
    assert "chosen after screening" not in "\n".join(plan_lines(unscreened))


def test_the_line_of_a_configuration_that_was_not_timed_says_why_apart_from_its_status():
    from autotune.report import screened_line

    slow = ScreenRecord(label="precision=fp16", config={"precision": "fp16"}, status="slow",
                        order=3, message="a warm-up step ran 39.7 examples/s")
    assert screened_line(slow) == \
        "  screened precision=fp16: slow (a warm-up step ran 39.7 examples/s)"
    cut = ScreenRecord(label="baseline", config={}, status=CUT, is_baseline=True)
    assert screened_line(cut) == "  screened baseline: cut"
