"""Worker side of the pipeline contract test, and a small pipeline-able task.

``TiedBlockNet`` is what a pipeline must handle in a language model, at toy size: token ids in,
an embedding, blocks in a ``ModuleList`` (where the stages are cut), and an output head whose
weight is the embedding's (tied, as GPT-2's), so the two stages each hold a copy of one
weight. ``step_in_pipeline`` runs under ``torch.multiprocessing.spawn``: every worker takes the
same batch, steps once and (rank 0) saves the full parameters and the clipped gradient norm.
``make_task`` is the same model as a task (``tests.pipeline_worker:make_task``) for trials.
"""

from __future__ import annotations

import gc

import torch
import torch.distributed as dist
from torch import nn

from autotune.recipe import Recipe
from autotune.tasks import Task
from autotune.train.parallel import init_worker, prepare

VOCAB, HIDDEN, BLOCKS, BATCH = 12, 16, 4, 8


class TiedBlockNet(nn.Module):
    """Embedding, ``BLOCKS`` residual MLP blocks in a ModuleList, a head tied to the
    embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.blocks = nn.ModuleList(nn.Linear(HIDDEN, HIDDEN) for _ in range(BLOCKS))
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for block in self.blocks:
            h = h + torch.tanh(block(h))
        return self.head(h)


def loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]).float(), batch[1])


def data(n: int, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and labels (the label is a fixed function of the token, so it can be learnt)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n,), generator=g)
    return tokens, (tokens * 5 + 3) % VOCAB


def task() -> Task:
    """The contract test's task: its training data is the test's batch."""
    x, y = data(BATCH)
    return Task(name="pipeline_contract", build_model=TiedBlockNet, train=(x, y),
                validation=(x, y), loss=loss, predict=lambda m, b: m(b[0]).argmax(-1),
                target=1.0)


def make_task(device: str = "cpu", target: float = 0.95) -> Task:
    """The model as a trial's task: learn ``label = 5 * token + 3 (mod VOCAB)``."""
    x, y = data(512, seed=0)
    return Task(name="pipeline_toy", build_model=TiedBlockNet, train=(x[:384], y[:384]),
                validation=(x[384:], y[384:]), loss=loss,
                predict=lambda m, b: m(b[0]).argmax(-1), target=target,
                default_batch_size=32, default_lr=3e-2, max_train_seconds=20.0,
                eval_every_seconds=0.05)


def initial_model() -> nn.Module:
    torch.manual_seed(0)
    return TiedBlockNet()


def micro_batches(accumulation: int) -> list[list[torch.Tensor]]:
    """The accumulation's micro-batches, ``BATCH`` examples each; every worker takes all."""
    x, y = data(BATCH * accumulation)
    return [[x[a * BATCH:(a + 1) * BATCH], y[a * BATCH:(a + 1) * BATCH]]
            for a in range(accumulation)]


def step_in_pipeline(rank: int, workers: int, port: int, recipe_dicts: list[dict],
                     out_path: str) -> None:
    """One optimizer step of each recipe (from the initial weights), in one process group, so
    that several cases share one start of the workers; rank 0 saves one result per recipe."""
    init_worker(rank, workers, "127.0.0.1", port, "cpu")
    try:
        results = []
        for recipe_dict in recipe_dicts:
            recipe = Recipe.from_dict(recipe_dict)
            prepared = prepare(initial_model(), recipe, torch.device("cpu"), task=task())
            loss_value = prepared.step(task(), micro_batches(recipe.accumulation_steps),
                                       strict=False)
            norm = prepared.grad_norm
            results.append({"params": prepared.full_state(), "loss": loss_value,
                            "grad_norm": None if norm is None else float(norm)})
            del prepared
            gc.collect()
        if rank == 0:
            torch.save(results, out_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()
