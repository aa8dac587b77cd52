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
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    predict: Callable[[nn.Module, Batch], torch.Tensor] | None
    """Predicted class ids for a batch, compared with the batch's last tensor (labels): the
    metric is then accuracy. None when ``evaluate`` gives the metric."""
    target: float
    """Validation metric value a trial must reach (in the metric's direction, see
    ``higher_is_better``); time-to-target is measured to it."""
    metric: str = "accuracy"
    """Name of the metric, shown in progress and results."""
    higher_is_better: bool = True
    """The metric's direction: True for accuracy-like metrics (reach ``>= target``), False for
    a validation loss or perplexity (reach ``<= target``)."""
    evaluate: Callable[[nn.Module, Iterable[Batch]], float] | None = None
    """The metric of a model over all validation batches, for metrics other than accuracy
    (a validation loss, perplexity, F1...). Called in eval mode without gradients, with the
    validation data in batches of ``eval_batch_size`` already on the model's device; returns
    one finite number. None: accuracy from ``predict``."""
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
        if self.predict is None and self.evaluate is None:
            raise ValueError(f"task {self.name!r}: give predict (the metric is accuracy) or "
                             "evaluate (any metric)")

    @property
    def num_train(self) -> int:
        return int(self.train[0].shape[0])

    @property
    def num_validation(self) -> int:
        return int(self.validation[0].shape[0])


class MetricError(Exception):
    """The task's metric function raised, or returned something that is not a finite number.
    A trial ends as failed with this message; the search goes on."""


def validation_batches(task: Task, device: torch.device) -> Iterator[Batch]:
    """``task.validation`` in batches of ``eval_batch_size``, on ``device``, in order."""
    for start in range(0, task.num_validation, task.eval_batch_size):
        yield [t[start : start + task.eval_batch_size].to(device) for t in task.validation]


def accuracy(task: Task, model: nn.Module, device: torch.device) -> float:
    """Accuracy of ``model`` on all of ``task.validation``, in eval mode and without gradients."""
    if task.predict is None:
        raise MetricError(f"task {task.name!r} has no predict function: accuracy needs one")
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for batch in validation_batches(task, device):
            correct += int((task.predict(model, batch) == batch[-1]).sum())
    model.train(was_training)
    return correct / task.num_validation


def evaluate_metric(task: Task, model: nn.Module, device: torch.device) -> float:
    """The task's metric of ``model`` on its validation data: ``task.evaluate`` (eval mode, no
    gradients) or accuracy. Raises ``MetricError`` naming the user's function when it raises
    or returns something that is not a finite number."""
    if task.evaluate is None:
        return accuracy(task, model, device)
    fn = task.evaluate
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            value = fn(model, validation_batches(task, device))
    except Exception as exc:  # noqa: BLE001 - the user's function: any failure is named
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise MetricError(f"the task's evaluate function {name} raised "
                          f"{type(exc).__name__}: {first}") from exc
    finally:
        model.train(was_training)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise MetricError(f"the task's evaluate function {name} returned {value!r}; it must "
                          "return one finite number")
    return float(value)


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
