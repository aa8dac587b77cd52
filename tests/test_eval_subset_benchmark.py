"""The pieces-against-whole-set benchmark (``benchmarks/eval_subset.py``) runs and reports what
the rule did, on the toy loss task (256 validation examples: 8 pieces of 32; its whole set reads
in a millisecond, so it is made "slow" for the rule to use its pieces at all)."""

from __future__ import annotations

import re

import pytest

from autotune.train import evaluation
from benchmarks import eval_subset


def test_it_reports_each_point_and_the_rules_cost(capsys, monkeypatch):
    monkeypatch.setattr(evaluation, "CHEAP_READ_S", 0.0)
    code = eval_subset.main(["--task", "tests.toy_task:make_loss_task", "--steps", "40",
                             "--every", "10", "--precision", "fp32", "--target", "0.05"])
    out = capsys.readouterr().out
    assert code == 0
    assert "256 validation examples in 8 pieces of 32-32, target 0.05" in out
    lines = re.findall(r"step (\d+): whole ([\d.]+) .*; rule ([\d.]+) (short|whole set)", out)
    assert [int(s) for s, *_ in lines] == [10, 20, 30, 40]
    # far above a target of 0.05 (the loss stays over 0.2): the pieces say short (rightly)
    # where they agree enough, and the point reads the whole set where they do not
    verdicts = [v for *_, v in lines]
    short = verdicts.count("short")
    assert short >= 1 and "WRONG" not in out
    assert f"4 points, {short} called short, 0 of them wrongly" in out
    for _, whole, rule, verdict in lines:  # a point read whole records the whole set's metric
        assert verdict == "short" or whole == rule


def test_accuracy_tasks_are_refused():
    with pytest.raises(SystemExit):
        eval_subset.main(["--task", "tests.toy_task:make_task", "--steps", "1"])
