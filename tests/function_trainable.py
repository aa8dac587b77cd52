"""Training functions for ``--function`` (``autotune.integrations.function``): a plain loop over
``tests.user_task``'s separable points with ``autotune.configure``, and the ways a function can
go wrong. ``fn(recipe, ctx)`` each."""

from __future__ import annotations

import time

import torch

import autotune
from autotune.integrations import TrialContext
from autotune.recipe import Recipe
from tests.user_task import loss, make_task

CALLS: list[str] = []
"""What the functions did, in this process (the tests read it)."""
WALL: dict[str, float] = {}
"""``train_linear``'s wall clock at ``ctx.start()`` and where it ended."""


def _setup(recipe: Recipe) -> tuple[autotune.Configured, tuple[torch.Tensor, ...],
                                    tuple[torch.Tensor, ...]]:
    task = make_task()
    model = task.build_model()
    return autotune.configure(recipe, model, device="cpu"), task.train, task.validation


def _accuracy(run: autotune.Configured, validation: tuple[torch.Tensor, ...]) -> float:
    with torch.no_grad(), run.autocast():
        return float((run.model(validation[0]).argmax(-1) == validation[1]).float().mean())


def train_linear(recipe: Recipe, ctx: TrialContext, eval_sleep: float = 0.0) -> None:
    """The plain loop of the README: batches of ``batch_size * accumulation_steps`` rows,
    ``run.step``, and an evaluation whenever ``ctx.step`` says so."""
    run, (x, y), validation = _setup(recipe)
    rows = recipe.batch_size * recipe.accumulation_steps
    gen = torch.Generator().manual_seed(ctx.seed)
    ctx.start()
    WALL["start"] = time.perf_counter()
    try:
        while True:
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x) - rows + 1, rows):
                batch = [x[order[start:start + rows]], y[order[start:start + rows]]]
                run.step(run.split(batch), loss)
                if ctx.step(examples=rows):
                    with ctx.evaluating():
                        time.sleep(eval_sleep)
                        accuracy = _accuracy(run, validation)
                    ctx.report(accuracy)
    finally:
        WALL["end"] = time.perf_counter()


def train_with_slow_evaluation(recipe: Recipe, ctx: TrialContext) -> None:
    train_linear(recipe, ctx, eval_sleep=0.3)


def never_reports(recipe: Recipe, ctx: TrialContext) -> None:
    """Trains, asks the clock, never reports, and returns after 20 steps."""
    run, (x, y), _ = _setup(recipe)
    for _ in range(20):
        run.step(run.split([x[:recipe.batch_size], y[:recipe.batch_size]]), loss)
        ctx.step(examples=recipe.batch_size)


def never_reports_nor_returns(recipe: Recipe, ctx: TrialContext) -> None:
    """Steps on forever without reporting: the clock ends it."""
    run, (x, y), _ = _setup(recipe)
    while True:
        run.step(run.split([x[:recipe.batch_size], y[:recipe.batch_size]]), loss)
        ctx.step(examples=recipe.batch_size)


def crashes_after_a_report(recipe: Recipe, ctx: TrialContext) -> None:
    ctx.report(0.5)
    raise ValueError("the user's data loader broke")


def reports_text(recipe: Recipe, ctx: TrialContext) -> None:
    ctx.report("0.9")  # type: ignore[arg-type]


def swallows_the_stop(recipe: Recipe, ctx: TrialContext) -> None:
    """A broad ``except Exception`` does not keep a decided trial going."""
    try:
        ctx.report(0.99)
    except Exception:  # noqa: BLE001 - the user's habit under test
        CALLS.append("swallowed")
    CALLS.append("after")
