"""User tasks that are wrong in the ways a real one can be; each must stop a search before its
first trial with one clear paragraph (``tests/test_task_errors.py``)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from autotune.tasks import Task
from tests.toy_task import as_dataset_task, make_loss_task, make_toy_task


def raises(device: str = "cpu") -> Task:
    raise FileNotFoundError("data/train.csv")


def not_a_task(device: str = "cpu") -> dict:
    return {"model": "mine"}


def wrong_input_size(device: str = "cpu") -> Task:
    """The model expects 8 features; the data has 16."""
    return dataclasses.replace(
        make_toy_task(), build_model=lambda: nn.Sequential(nn.Linear(8, 2)))


def too_few_examples(device: str = "cpu") -> Task:
    task = make_toy_task(n=40)  # 30 training examples; the baseline batch is 32
    return task


def nan_loss(device: str = "cpu") -> Task:
    def loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        return model(batch[0]).sum() * float("nan")

    return dataclasses.replace(make_toy_task(), loss=loss)


def vector_loss(device: str = "cpu") -> Task:
    def loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="none")

    return dataclasses.replace(make_toy_task(), loss=loss)


def broken_metric(device: str = "cpu") -> Task:
    return make_loss_task(broken_metric="raise")


def broken_predict(device: str = "cpu") -> Task:
    def predict(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        return model(batch[1])  # the labels, not the inputs

    return dataclasses.replace(make_toy_task(), predict=predict)


class _RaggedDataset(torch.utils.data.Dataset):
    """Samples of different lengths: torch's default_collate cannot stack them."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones(1 + i % 5), torch.tensor(i % 2)


def ragged_without_collate(device: str = "cpu") -> Task:
    return dataclasses.replace(make_toy_task(), train=_RaggedDataset(),
                               validation=_RaggedDataset())


def _broken_collate(samples: list) -> list:
    raise ValueError("padding token not set")


def collate_raises(device: str = "cpu") -> Task:
    return dataclasses.replace(as_dataset_task(make_toy_task()), collate=_broken_collate)


class _UnreadableDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise FileNotFoundError(f"images/{i}.png")


def unreadable_samples(device: str = "cpu") -> Task:
    return dataclasses.replace(make_toy_task(), train=_UnreadableDataset(),
                               validation=_UnreadableDataset())


def dataset_too_small(device: str = "cpu") -> Task:
    return as_dataset_task(make_toy_task(n=40))


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):  # noqa: ANN204
        yield from ()


def iterable_dataset(device: str = "cpu") -> Task:
    return dataclasses.replace(make_toy_task(), train=_Stream(), validation=_Stream())
