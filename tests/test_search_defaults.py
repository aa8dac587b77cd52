"""A search of a task with no space of its own: the default space, generated from the task's
baseline, printed and saved; the general warm-start rules run right after the baseline, each
named; ``--no-warm-start`` turns them off."""

import json

from autotune.cli import main
from autotune.default_space import default_space_yaml
from autotune.hardware import bf16_is_fast
from autotune.recipe import Recipe
from autotune.space import load_space, parse_space
from autotune.warm_start import snap_all_to_space, warm_starts


def _records(results):
    return [json.loads(x) for x in (results / "trials.jsonl").read_text().splitlines()]


def test_a_task_without_a_space_gets_the_default_space_and_the_warm_start_rules(tmp_path,
                                                                                capsys):
    results = tmp_path / "run"
    # screening off: its own warm start would lead (tests/test_screening.py)
    code = main(["search", "--model", "tests.toy_task:make_task", "--trials", "3", "--confirm",
                 "0", "--no-screen", "--results-dir", str(results)])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    baseline = Recipe(lr=1e-2)  # the toy task's batch 32, lr 1e-2
    expected = default_space_yaml(baseline, "cpu", bf16_fast=bf16_is_fast("cpu"),
                                  source="tests.toy_task:make_task")
    assert (results / "space.yaml").read_text() == expected  # saved, editable
    assert "the default space, saved as" in out and "  | knobs:" in out  # printed
    space = load_space(results / "space.yaml")
    rules = snap_all_to_space(warm_starts(baseline, "cpu", bf16_fast=bf16_is_fast("cpu")),
                              space)
    records = _records(results)
    assert records[0]["is_baseline"] and not records[0]["warm_start"]
    warm = [r for r in records if r["warm_start"]]
    assert [r["warm_start_name"] for r in warm] == [ws.name for ws in rules][:2]
    assert [r["recipe"] for r in warm] == [ws.recipe.to_dict() for ws in rules][:2]
    for ws in rules[:2]:
        assert f"(warm start: {ws.name})" in out


def test_no_warm_start_runs_no_rule_and_a_given_space_is_copied(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  precision: {choices: [fp32, bf16]}\n"
                     "  batch_size: {choices: [32, 64]}\n")
    results = tmp_path / "run"
    code = main(["search", "--model", "tests.toy_task:make_task", "--space", str(space),
                 "--trials", "2", "--confirm", "0", "--no-warm-start",
                 "--results-dir", str(results)])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "warm start after the baseline: none" in out
    assert not any(r["warm_start"] for r in _records(results))
    assert (results / "space.yaml").read_text() == space.read_text()
    parse_space((results / "space.yaml").read_text())
