"""Training batches for a trial: the data order, and the ``DataLoader`` that a ``Dataset`` task
is read through, built from the recipe's DataLoader knobs.

Both kinds of task data follow the same order (``EpochOrder``): each epoch a seeded
permutation of the training set, this worker's share of it (``rank::world``), cut into
micro-batches, the last incomplete one dropped. Tensor data are moved to the device once and
sliced there (``TensorBatches``). A ``Dataset`` is read through a ``DataLoader`` whose batch
sampler yields those same index lists (``LoaderBatches``), so a Dataset task and a tensor task
holding the same samples train identically for the same seed and recipe (a test checks it).

The clock: waiting for a batch is training time, since it is what the DataLoader knobs change;
the loop takes each micro-batch inside its training clock. Starting the loader (its worker
processes and the first batch) is setup: ``start()`` measures it, and the trial records it as
``loader_start_seconds``. Without ``persistent_workers`` a DataLoader starts its workers again
at every epoch; those restarts fall inside the training clock, which is the cost that
persistent workers remove.

Memory: loader workers are separate processes. What the trial process holds of their work
(prefetched batches waiting in shared memory, pinned copies) is not tensor memory of the
training step, so the CPU's tracked peak does not count it; the process's RSS does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from autotune.recipe import Recipe
from autotune.tasks import Batch, Task, move_batch

DATA_KNOBS = ("dataloader_workers", "pin_memory", "prefetch_factor", "persistent_workers")
"""The recipe's knobs that act on a ``DataLoader``."""


class EpochOrder:
    """Index tensors of one worker's micro-batches, epoch after epoch, from one seeded
    generator: the data order every trial of a seed shares, whatever reads the data."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.rank, self.world = n, rank, world
        share = len(range(rank, n, world))
        self.batch_size = max(1, min(batch_size, share))
        self.generator = torch.Generator().manual_seed(seed)

    def epoch(self) -> torch.Tensor:
        """The next epoch's order of this worker's share (every worker draws the same
        permutation from the same seed and takes its own slice)."""
        return torch.randperm(self.n, generator=self.generator)[self.rank :: self.world]

    def batches_per_epoch(self) -> int:
        return len(range(self.rank, self.n, self.world)) // self.batch_size


class _EpochBatchSampler(Sampler[list[int]]):
    """One epoch of ``EpochOrder`` per iteration, as index lists (a DataLoader's
    ``batch_sampler``; it runs in the training process, so the order does not depend on the
    number of loader workers)."""

    def __init__(self, order: EpochOrder) -> None:
        self.order = order

    def __iter__(self) -> Iterator[list[int]]:
        idx = self.order.epoch()
        size = self.order.batch_size
        for start in range(0, self.order.batches_per_epoch() * size, size):
            yield idx[start : start + size].tolist()

    def __len__(self) -> int:
        return self.order.batches_per_epoch()


def _to_device(indices: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``indices`` on ``device``; to a GPU through pinned memory, asynchronously: a copy from
    pageable memory waits for the device, once per epoch on the training clock."""
    if device.type != "cuda":
        return indices.to(device)
    return indices.pin_memory().to(device, non_blocking=True)


class TensorBatches:
    """Endless shuffled micro-batches sliced from tensors already on the device."""

    def __init__(self, task: Task, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1) -> None:
        self.data = tuple(t.to(device) for t in task.train)
        self.order = EpochOrder(task.num_train, batch_size, seed, rank, world)
        self.positions = torch.empty(0, dtype=torch.long)
        self.position = 0
        self.epochs = 0

    def start(self) -> float:
        return 0.0

    def next(self) -> Batch:
        size = self.order.batch_size
        if self.position + size > self.positions.numel():
            self.positions = _to_device(self.order.epoch(), self.data[0].device)
            self.position = 0
            self.epochs += 1
        idx = self.positions[self.position : self.position + size]
        self.position += size
        return [t.index_select(0, idx) for t in self.data]

    def close(self) -> None:
        pass


def loader_options(recipe: Recipe, device_type: str) -> dict[str, Any]:
    """The ``DataLoader`` keyword arguments of the recipe's DataLoader knobs on a device:
    pinning only where there is a GPU to copy to; prefetching and persistence only with
    workers (torch rejects them without)."""
    options: dict[str, Any] = {
        "num_workers": recipe.dataloader_workers,
        "pin_memory": recipe.pin_memory and device_type == "cuda",
    }
    if recipe.dataloader_workers > 0:
        options["prefetch_factor"] = recipe.prefetch_factor
        options["persistent_workers"] = recipe.persistent_workers
    return options


def inactive_data_knobs(task: Task, recipe: Recipe, device_type: str) -> list[str]:
    """The recipe's DataLoader knobs that cannot act in this trial, one line each with why (a
    trial records them, so a result never credits a knob that did nothing)."""
    base = Recipe()
    changed = [k for k in DATA_KNOBS if getattr(recipe, k) != getattr(base, k)]
    if not task.is_dataset:
        return [f"{k}: the task's data are tensors, sliced on the device; no DataLoader"
                for k in changed]
    if recipe.pin_memory and device_type != "cuda":
        return [f"pin_memory: no effect on {device_type} (pinned memory speeds up copies to a "
                "GPU)"]
    return []


class LoaderBatches:
    """Endless micro-batches of a ``Dataset`` through a ``DataLoader`` built from the recipe,
    moved to the device (asynchronously from pinned memory)."""

    def __init__(self, task: Task, recipe: Recipe, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1) -> None:
        self.device = device
        self.order = EpochOrder(task.num_train, recipe.batch_size, seed, rank, world)
        options = loader_options(recipe, device.type)
        self.non_blocking = options["pin_memory"]
        # Its own generator: a DataLoader draws its workers' base seed from the generator it
        # is given, and from torch's global one otherwise, which would shift the model's
        # dropout away from the tensor path's.
        self.loader = DataLoader(
            task.train, batch_sampler=_EpochBatchSampler(self.order),
            collate_fn=task.collate_fn, generator=torch.Generator().manual_seed(seed),
            **options)
        self.iterator: Iterator[Any] | None = None
        self.pending: Any = None
        self.epochs = 0

    def start(self) -> float:
        """Start the loader (its workers, if any) and take the first batch; returns the
        seconds that took (setup, not training time)."""
        begin = time.perf_counter()
        self.pending = self._fetch()
        return time.perf_counter() - begin

    def _fetch(self) -> Any:
        while True:
            if self.iterator is None:
                self.iterator = iter(self.loader)
                self.epochs += 1
            try:
                return next(self.iterator)
            except StopIteration:
                self.iterator = None

    def next(self) -> Batch:
        batch = self.pending if self.pending is not None else self._fetch()
        self.pending = None
        return move_batch(batch, self.device, non_blocking=self.non_blocking)

    def close(self) -> None:
        """Stop the loader's workers now rather than at garbage collection."""
        iterator, self.iterator = self.iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def make_batches(task: Task, recipe: Recipe, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1) -> TensorBatches | LoaderBatches:
    """The training batch source for ``task``'s data: sliced tensors or a DataLoader."""
    if task.is_dataset:
        return LoaderBatches(task, recipe, seed, device, rank, world)
    return TensorBatches(task, recipe.batch_size, seed, device, rank, world)
