"""The step-throughput benchmark (``benchmarks.throughput``): what it compares and how.

The plain loop and a real trial run for real on the toy task (a few steps each); the pairing
test replaces the two timings with fixed seconds, since what it checks is the order of the
runs and the pooling, which real timings on a shared CPU would blur.
"""

from __future__ import annotations

import pytest

from autotune.recipe import Recipe
from benchmarks import throughput
from tests.toy_task import make_toy_task


def test_pairs_alternate_their_order_and_pool_all_steps_over_all_seconds(monkeypatch):
    calls: list[tuple[str, int]] = []

    def ours(task, recipe, steps, seed, device="cpu"):
        calls.append(("ours", seed))
        return 2.0 if seed == 0 else 4.0

    def plain(task, recipe, steps, seed, device="cpu"):
        calls.append(("plain", seed))
        return 1.0 if seed == 0 else 5.0

    monkeypatch.setattr(throughput, "autotune_seconds", ours)
    monkeypatch.setattr(throughput, "plain_loop_seconds", plain)
    (row,) = throughput.throughput_rows(make_toy_task(), [Recipe()], steps=10, reps=2)
    # Drift falls on both: the trial goes first in one pair, second in the next; a pair
    # shares its seed (the same model and batches).
    assert calls == [("ours", 0), ("plain", 0), ("plain", 1), ("ours", 1)]
    assert row["ratio"] == pytest.approx((1.0 + 5.0) / (2.0 + 4.0))  # pooled, not a median
    assert row["autotune_steps_per_s"] == pytest.approx(20 / 6.0)
    assert row["plain_steps_per_s"] == pytest.approx(20 / 6.0)
    assert row["pair_ratios"] == [0.5, 1.25]


def test_both_loops_really_train_the_recipes_steps():
    task = make_toy_task()
    recipe = Recipe(batch_size=16, lr=1e-2)
    assert throughput.plain_loop_seconds(task, recipe, steps=5, seed=0) > 0
    assert throughput.autotune_seconds(task, recipe, steps=5, seed=0) > 0
    (row,) = throughput.throughput_rows(task, [recipe], steps=5, reps=1)
    assert row["ratio"] > 0 and len(row["pair_ratios"]) == 1


def test_the_step_alone_is_timed_in_alternating_blocks_on_the_same_batches():
    (row,) = throughput.step_rows(make_toy_task(), [Recipe(batch_size=16, lr=1e-2)],
                                  steps=3, blocks=2)
    assert row["autotune_step_ms"] > 0 and row["plain_step_ms"] > 0
    assert row["ratio"] == pytest.approx(row["plain_step_ms"] / row["autotune_step_ms"])
