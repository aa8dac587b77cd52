"""Worker side of the parallel contract tests: one optimizer step in a parallel mode.

Run by ``torch.multiprocessing.spawn`` from tests/test_parallel.py; each worker takes its half
of a fixed batch, steps once, gathers the full parameters and (rank 0) saves them with the
global gradient norm the step clipped by (``None`` without ``grad_clip``).
"""

from __future__ import annotations

import gc
import os

import torch
import torch.distributed as dist
from torch import nn

from autotune.knobs import load_teacher
from autotune.recipe import Recipe
from autotune.tasks import Task
from autotune.train.parallel import init_worker, prepare

DIM, HIDDEN, CLASSES, BATCH = 8, 16, 3, 8
"""BATCH is one worker's micro-batch; the single-process reference takes 2 x BATCH."""


class BlockNet(nn.Module):
    """An MLP whose hidden blocks sit in a ModuleList, as transformer layers do (FSDP shards
    each block)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(DIM, HIDDEN)
        self.blocks = nn.ModuleList(nn.Linear(HIDDEN, HIDDEN) for _ in range(2))
        self.out = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        for block in self.blocks:
            h = torch.relu(block(h))
        return self.out(h)


def data(workers: int, accumulation: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    n = BATCH * workers * accumulation
    return torch.randn(n, DIM, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def task() -> Task:
    x, y = data(1, 1)
    return Task(
        name="contract", build_model=BlockNet, train=(x, y), validation=(x, y),
        loss=lambda m, b: nn.functional.cross_entropy(m(b[0]).float(), b[1]),
        predict=lambda m, b: m(b[0]).argmax(-1), target=1.0,
        teacher=teacher, outputs=outputs,
    )


def teacher() -> nn.Module:
    """The distillation cases' teacher: another seeded BlockNet (its logits differ from the
    model's, which is all the contract needs)."""
    torch.manual_seed(7)
    return BlockNet()


def outputs(model: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(batch[0])
    return nn.functional.cross_entropy(logits.float(), batch[1]), logits


def initial_model() -> nn.Module:
    torch.manual_seed(0)
    return BlockNet()


def micro_batches(rank: int, workers: int, accumulation: int) -> list[list[torch.Tensor]]:
    """Worker ``rank``'s micro-batches: rows are dealt so that the workers' micro-batches of
    one accumulation step together make the reference's micro-batch of that step."""
    x, y = data(workers, accumulation)
    out = []
    for a in range(accumulation):
        start = (a * workers + rank) * BATCH
        out.append([x[start:start + BATCH], y[start:start + BATCH]])
    return out


def step_in_mode(rank: int, workers: int, port: int, recipe_dict: dict, out_path: str) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_worker(rank, workers, "127.0.0.1", port, "cpu")
    try:
        recipe = Recipe.from_dict(recipe_dict)
        prepared = prepare(initial_model(), recipe, torch.device("cpu"),
                           load_teacher(task(), recipe))
        prepared.step(task(), micro_batches(rank, workers, recipe.accumulation_steps))
        state = prepared.full_state()
        norm = prepared.grad_norm
        if rank == 0:
            torch.save({"params": state,
                        "grad_norm": None if norm is None else float(norm)}, out_path)
        # Free the wrappers (DDP's reducer, FSDP hooks) while the process group still exists:
        # destroyed after it, at interpreter exit, they can abort the process.
        del prepared
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()
