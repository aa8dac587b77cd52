"""Training functions for ``--function`` (``autotune.integrations.function``): a plain loop over
``tests.user_task``'s separable points with ``autotune.configure``, and the ways a function can
go wrong. ``fn(recipe, ctx)`` each."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

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


# -- multi-worker trials (tests/test_integration_workers.py) ----------------------------------

RECORD_DIR = "AUTOTUNE_TEST_RECORD_DIR"
"""The environment variable naming the folder where ``train_ddp``'s workers write what they
saw, one JSON file per rank (a worker is another process)."""


def _flat_grad(params: list[torch.nn.Parameter]) -> list[float]:
    return torch.cat([p.grad.flatten() for p in params]).tolist()


def train_ddp(recipe: Recipe, ctx: TrialContext, fail_at_step: int | None = None) -> None:
    """A data-parallel loop as a user writes it for torchrun: the model in
    ``DistributedDataParallel``, each worker on its own shard of the data (``ctx.rank``), plain
    SGD at the recipe's rate, ``ctx.step``/``ctx.report`` on every worker. Worker 1 raises at
    step ``fail_at_step`` when given. Writes ``rank<N>.json``: the group it saw, the first
    step's gradient (DDP's, all-reduced) and the worker's own shard's gradient, and the final
    weights."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    task = make_task()
    (x, y), (vx, vy) = task.train, task.validation
    x, y = x[ctx.rank::ctx.world_size], y[ctx.rank::ctx.world_size]  # this worker's shard
    model = task.build_model()
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr)
    params = list(model.parameters())
    seen: dict[str, object] = {
        "initialized": dist.is_initialized(), "world": dist.get_world_size(),
        "rank": dist.get_rank(), "ctx": [ctx.rank, ctx.world_size],
        "env": {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE",
                                              "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}}
    rows = recipe.batch_size
    gen = torch.Generator().manual_seed(ctx.seed)
    steps = 0
    ctx.start()
    try:
        while True:
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x) - rows + 1, rows):
                idx = order[start:start + rows]
                if "grad" not in seen:  # this shard's gradient alone, without DDP's all-reduce
                    own = torch.autograd.grad(loss(model, [x[idx], y[idx]]), params)
                    seen["own_grad"] = torch.cat([g.flatten() for g in own]).tolist()
                optimizer.zero_grad()
                loss(ddp, [x[idx], y[idx]]).backward()
                seen.setdefault("grad", _flat_grad(params))
                optimizer.step()
                steps += 1
                if ctx.rank == 1 and steps == fail_at_step:
                    raise ValueError("worker 1's shard is broken")
                if ctx.step(examples=rows):
                    with ctx.evaluating(), torch.no_grad():
                        accuracy = float((model(vx).argmax(-1) == vy).float().mean())
                    ctx.report(accuracy)
    finally:
        seen["weights"] = torch.cat([p.detach().flatten() for p in params]).tolist()
        folder = os.environ.get(RECORD_DIR)
        if folder:
            Path(folder, f"rank{ctx.rank}.json").write_text(json.dumps(seen))


def train_ddp_failing_on_rank_1(recipe: Recipe, ctx: TrialContext) -> None:
    """``train_ddp`` whose worker 1 raises after its 5th step: worker 0 goes on into the next
    gradient all-reduce, where it would wait for worker 1 forever."""
    train_ddp(recipe, ctx, fail_at_step=5)
