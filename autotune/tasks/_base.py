"""The task: what is trained and how it is judged.

A task is plain composition (no inheritance): a model factory, train and validation data as
tensors, a loss, a metric, and the target value of that metric. The trainer in
``autotune.train`` knows nothing of BERT or images; it only calls what a ``Task`` holds.

User tasks: ``--model package.module:function`` imports ``function`` and calls it with the
keyword arguments ``device`` (``"cpu"`` or ``"cuda"``) and returns a ``Task``. See the README,
section "Bring your own task".
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autotune.errors import UserError

Batch = Sequence[torch.Tensor]
"""A batch is a tuple of tensors with the same first dimension; the last one is the labels."""


@dataclass(frozen=True)
class Task:
    """Everything the trainer needs to train a model and measure time-to-target.

    The data are held as tensors (``train`` and ``validation`` are tuples of tensors sharing the
    first dimension), so a trial slices batches without a DataLoader's worker processes, which
    would distort timings on a small CPU.
    """

    name: str
    """Short name, used in results and recipe files (``bert``, ``mnist``, or ``pkg.mod:fn``)."""
    build_model: Callable[[], nn.Module]
    """Returns a fresh model on the CPU, initialised from the current torch RNG state."""
    train: tuple[torch.Tensor, ...]
    """Training data: input tensors then labels, all with the same first dimension."""
    validation: tuple[torch.Tensor, ...]
    """Validation data, same layout as ``train``; the metric is measured on all of it."""
    loss: Callable[[nn.Module, Batch], torch.Tensor]
    """Mean loss of a model on a batch (already on the model's device)."""
    predict: Callable[[nn.Module, Batch], torch.Tensor]
    """Predicted class ids for a batch, compared with the batch's last tensor (labels)."""
    target: float
    """Validation accuracy a trial must reach; time-to-target is measured to it."""
    metric: str = "accuracy"
    """Name of the metric, shown in progress and results."""
    default_batch_size: int = 32
    """Batch size of the baseline recipe: the documented default for this task."""
    default_lr: float = 1e-3
    """AdamW learning rate of the baseline recipe: one known to work for this task."""
    max_train_seconds: float = 60.0
    """Default limit of one trial's training time; a trial that has not reached the target
    by then stops with no time-to-target."""
    eval_every_seconds: float = 1.0
    """Training seconds between two evaluations; the resolution of time-to-target."""
    eval_batch_size: int = 256
    """Batch size used for evaluation (no gradients)."""
    description: str = ""
    """One line for ``autotune --help`` and results: model, data set, sizes."""
    info: dict[str, Any] = field(default_factory=dict)
    """Facts worth recording with results (model size, data set size, licence)."""
    load_spec: tuple[str, dict[str, Any]] | None = None
    """``(name, options)`` that ``load_task`` built this task from, set by it: how each worker
    process of a multi-worker trial builds the task again."""
    suggested_recipes: tuple[dict[str, Any], ...] = ()
    """Known-good starting points, as changes to the baseline recipe (e.g. ``{"precision":
    "bf16"}``). A search evaluates those that lie in its space right after the baseline (a warm
    start), so a short search never misses the usual wins; they are measured like any trial."""

    def __post_init__(self) -> None:
        n_train = {t.shape[0] for t in self.train}
        n_val = {t.shape[0] for t in self.validation}
        if len(n_train) != 1 or len(n_val) != 1:
            raise ValueError(
                f"task {self.name!r}: every train tensor and every validation tensor must share "
                f"its first dimension, got train sizes {sorted(n_train)} and validation sizes "
                f"{sorted(n_val)}"
            )
        if not 0.0 < self.target:
            raise ValueError(f"task {self.name!r}: target must be > 0, got {self.target}")

    @property
    def num_train(self) -> int:
        return int(self.train[0].shape[0])

    @property
    def num_validation(self) -> int:
        return int(self.validation[0].shape[0])


def accuracy(task: Task, model: nn.Module, device: torch.device) -> float:
    """Accuracy of ``model`` on all of ``task.validation``, in eval mode and without gradients."""
    was_training = model.training
    model.eval()
    correct = 0
    total = task.num_validation
    with torch.no_grad():
        for start in range(0, total, task.eval_batch_size):
            batch = [t[start : start + task.eval_batch_size].to(device) for t in task.validation]
            correct += int((task.predict(model, batch) == batch[-1]).sum())
    model.train(was_training)
    return correct / total


def package_data_file(package: str, relative: str, install: str) -> Path:
    """Path of a data file shipped inside an installed package, without importing the package.

    The built-in tasks take their data from wheels on PyPI so that they load offline; importing
    those packages would pull in their heavy dependencies, so only the import system's finder is
    asked where the package lives. ``install`` is the pip command that provides the file; it is
    named in the ``UserError`` raised when the package or the file is missing.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise UserError(
            f"the package {package!r}, which holds the data of this task, is not installed. "
            f"Install it with: {install}"
        )
    path = Path(locations[0]) / relative
    if not path.is_file():
        raise UserError(
            f"the data file {relative!r} is missing from the installed package {package!r} "
            f"(looked for {path}). Reinstall it with: {install} --force-reinstall"
        )
    return path
