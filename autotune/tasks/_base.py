"""The task: what is trained and how it is judged.

A task is plain composition (no inheritance): a model factory, train and validation data (as
tensors, or as map-style ``Dataset``s with an optional collate function), a loss, a metric and
its direction, and the target value of that metric. The trainer in ``autotune.train`` knows
nothing of BERT or images; it only calls what a ``Task`` holds.

User tasks: ``--model package.module:function`` imports ``function`` and calls it with the
keyword arguments ``device`` (``"cpu"`` or ``"cuda"``) and returns a ``Task``. See the README,
section "Bring your own task".
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from autotune.errors import UserError

Batch = Any
"""What ``Task.loss`` and ``Task.evaluate`` receive. For tensor data, a list of tensors with the
same first dimension, the labels last. For a ``Dataset``, whatever the task's collate function
makes of a list of samples (torch's ``default_collate`` when it gives none: tensors stacked,
in the samples' own structure), with every tensor in it on the training device."""

TaskData = tuple[torch.Tensor, ...] | Dataset
"""A task's training or validation data: tensors sharing their first dimension (the labels
last), or a map-style ``Dataset`` (``len`` and ``dataset[i]``) of samples."""

OutputsFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor]]
"""``outputs(model, batch) -> (mean task loss, logits)`` from one forward pass (``Task.outputs``).
The logits are ``(rows, classes)``: one row per example, or per real token of a token task
(padded positions left out), so that a distillation term can average over rows."""


@dataclass(frozen=True)
class Task:
    """Everything the trainer needs to train a model and measure time-to-target.

    The data are tensors or ``Dataset``s. Tensors (tuples of tensors sharing the first
    dimension) are moved to the device once and sliced there: the fastest path for data that
    fits in memory, with no DataLoader to tune. A ``Dataset`` is read through a ``DataLoader``
    that autotune builds from the recipe (worker processes, pinned memory, prefetching,
    persistent workers: ``autotune.train.data``), with ``collate`` making batches of samples.
    """

    name: str
    """Short name, used in results and recipe files (``bert``, ``mnist``, or ``pkg.mod:fn``)."""
    build_model: Callable[[], nn.Module]
    """Returns a fresh model on the CPU, initialised from the current torch RNG state."""
    train: TaskData
    """Training data: input tensors then labels, all with the same first dimension; or a
    map-style ``Dataset`` of samples."""
    validation: TaskData
    """Validation data, of the same kind as ``train``; the metric is measured on all of it."""
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
    collate: Callable[[list[Any]], Batch] | None = None
    """For ``Dataset`` data: makes one batch of a list of samples (padding, stacking, masks),
    as a ``DataLoader``'s ``collate_fn``. None: torch's ``default_collate``. It runs in the
    loader's worker processes when the recipe has any, so it must be picklable there (a
    module-level function; a lambda works with the default fork start method on Linux)."""
    suggested_recipes: tuple[dict[str, Any], ...] = ()
    """Known-good starting points, as changes to the baseline recipe (e.g. ``{"precision":
    "bf16"}``). A search evaluates those that lie in its space right after the baseline (a warm
    start), so a short search never misses the usual wins; they are measured like any trial."""
    teacher: Callable[[], nn.Module] | None = None
    """For knowledge distillation (the recipe's ``distill_weight`` > 0): returns the trained
    teacher model on the CPU, which takes the same batches as the model and predicts the same
    classes. Called once per trial, outside the training clock, so it must be cheap after its
    first call: load a checkpoint, cached (``autotune.tasks.teachers.trained_teacher`` trains
    one once and keeps it in ``autotune``'s cache, as a downloaded checkpoint would be).
    autotune freezes it and puts it in eval mode. None: the task has no teacher, and a
    recipe that distils is an error for it. Needs ``outputs``."""
    outputs: OutputsFn | None = None
    """``(mean task loss, logits)`` of a model on a batch from ONE forward pass, so that
    distillation runs the model once per micro-batch; applied to the teacher too (its loss
    is ignored). The loss must equal ``loss(model, batch)``; the logits are ``(rows,
    classes)``, padded positions left out. Needed with ``teacher``."""

    def __post_init__(self) -> None:
        for role in ("train", "validation"):
            _check_data(self.name, role, getattr(self, role))
        if not self.is_dataset and isinstance(self.validation, Dataset):
            raise ValueError(f"task {self.name!r}: train holds tensors but validation is a "
                             "Dataset; give both as tensors or both as Datasets")
        if self.is_dataset and not isinstance(self.validation, Dataset):
            raise ValueError(f"task {self.name!r}: train is a Dataset but validation holds "
                             "tensors; give both as tensors or both as Datasets")
        if self.collate is not None and not self.is_dataset:
            raise ValueError(f"task {self.name!r}: collate applies to Dataset data; tensor "
                             "data are sliced into batches as they are")
        if not 0.0 < self.target:
            raise ValueError(f"task {self.name!r}: target must be > 0, got {self.target}")
        if self.teacher is not None and self.outputs is None:
            raise ValueError(f"task {self.name!r}: a teacher needs outputs (the loss and logits "
                             "of one forward pass), which distillation applies to both models")
        if self.predict is None and self.evaluate is None:
            raise ValueError(f"task {self.name!r}: give predict (the metric is accuracy) or "
                             "evaluate (any metric)")

    @property
    def is_dataset(self) -> bool:
        """Whether the data are ``Dataset``s (read through DataLoaders) rather than tensors."""
        return isinstance(self.train, Dataset)

    @property
    def num_train(self) -> int:
        return _length(self.train)

    @property
    def num_validation(self) -> int:
        return _length(self.validation)

    @property
    def collate_fn(self) -> Callable[[list[Any]], Batch]:
        """The function that makes a batch of samples (``collate`` or ``default_collate``)."""
        return self.collate or default_collate


def _length(data: TaskData) -> int:
    return len(data) if isinstance(data, Dataset) else int(data[0].shape[0])  # type: ignore[arg-type]


def _check_data(name: str, role: str, data: Any) -> None:
    """``ValueError`` for data that are neither tensors sharing a first dimension nor a
    map-style Dataset with a length."""
    if isinstance(data, IterableDataset):
        raise ValueError(
            f"task {name!r}: {role} is an IterableDataset; autotune needs a map-style Dataset "
            "(len(dataset) and dataset[i]) to shuffle, split over workers and size batches")
    if isinstance(data, Dataset):
        try:
            len(data)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(f"task {name!r}: {role} is a Dataset without __len__; give it "
                             "one (autotune needs the number of samples)") from None
        return
    if not isinstance(data, (tuple, list)) or not data \
            or not all(isinstance(t, torch.Tensor) for t in data):
        raise ValueError(
            f"task {name!r}: {role} must be a tuple of tensors (inputs, then labels) or a "
            f"map-style torch.utils.data.Dataset; got {type(data).__name__}")
    sizes = {t.shape[0] for t in data}
    if len(sizes) != 1:
        raise ValueError(
            f"task {name!r}: every {role} tensor must share its first dimension, got sizes "
            f"{sorted(sizes)}")


class MetricError(Exception):
    """The task's metric function raised, or returned something that is not a finite number.
    A trial ends as failed with this message; the search goes on."""


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], batch: Any) -> Any:
    """``batch`` with ``fn`` applied to every tensor in it, through lists, tuples (named ones
    too) and mappings (a mapping comes back as a dict unless its type can be rebuilt)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        items = {k: map_tensors(fn, v) for k, v in batch.items()}
        try:
            return type(batch)(items)  # type: ignore[call-arg]
        except TypeError:
            return items
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(map_tensors(fn, v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(map_tensors(fn, v) for v in batch)
    return batch


def move_batch(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor on ``device`` (``non_blocking`` for pinned host memory)."""
    return map_tensors(lambda t: t.to(device, non_blocking=non_blocking), batch)


PIECES = 8
"""A trial reads an accuracy task's validation set in up to this many pieces
(``autotune.train.evaluation``)..."""
MIN_PIECE = 250
"""...of at least this many examples each (a set under twice this is read whole)..."""
PIECE_BATCH_DIVISOR = 4
"""...in batches of the task's ``eval_batch_size`` divided by this: a piece of a set sorted
by length spans every length, and one large batch of it would pad every sentence to the
longest."""


def piece_count(task: Task) -> int:
    """How many pieces a trial's accuracy evaluation splits ``task``'s validation set into
    (1: it is read whole)."""
    return max(1, min(PIECES, task.num_validation // MIN_PIECE))


def evaluation_batch_size(task: Task, quick: bool = True) -> int:
    """The largest batch a trial's evaluation of ``task`` reads: ``eval_batch_size``, or,
    where accuracy is read in pieces (``quick``, no ``Task.evaluate``, a set of two pieces or
    more), a quarter of it or a whole piece, whichever is smaller. Here, below training and
    the memory model, so that the memory model traces the batch a trial really reads."""
    count = piece_count(task)
    if quick and task.evaluate is None and count > 1:
        largest_piece = -(-task.num_validation // count)
        return min(max(1, task.eval_batch_size // PIECE_BATCH_DIVISOR), largest_piece)
    return task.eval_batch_size


def validation_batches(task: Task, device: torch.device) -> Iterator[Batch]:
    """``task.validation`` in batches of ``eval_batch_size``, on ``device``, in order. A
    ``Dataset`` is read in this process (no loader workers: evaluation is not on the
    training clock, and workers would hold memory between evaluations)."""
    if isinstance(task.validation, Dataset):
        loader = DataLoader(task.validation, batch_size=task.eval_batch_size, shuffle=False,
                            collate_fn=task.collate_fn)
        for batch in loader:
            yield move_batch(batch, device)
        return
    for start in range(0, task.num_validation, task.eval_batch_size):
        yield [t[start : start + task.eval_batch_size].to(device) for t in task.validation]


def accuracy(task: Task, model: nn.Module, device: torch.device) -> float:
    """Accuracy of ``model`` on all of ``task.validation``, in eval mode and without gradients."""
    if task.predict is None:
        raise MetricError(f"task {task.name!r} has no predict function: accuracy needs one")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.no_grad():  # counted on the device, read once (each read waits for a GPU)
        for batch in validation_batches(task, device):
            correct += (task.predict(model, batch) == batch[-1]).sum()
    model.train(was_training)
    return int(correct) / task.num_validation


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


DATA_DIR_ENV = "AUTOTUNE_DATA_DIR"
"""Folder that ``package_data_file`` looks in first: ``$AUTOTUNE_DATA_DIR/<package>/<relative>``.
For a machine without the data wheels (a GPU machine that gets only the few files the tasks
read, ``benchmarks/device_pack.py``)."""


def package_data_file(package: str, relative: str, install: str) -> Path:
    """Path of a data file shipped inside an installed package, without importing the package.

    The built-in tasks take their data from wheels on PyPI so that they load offline; importing
    those packages would pull in their heavy dependencies, so only the import system's finder is
    asked where the package lives. ``install`` is the pip command that provides the file; it is
    named in the ``UserError`` raised when the package or the file is missing.

    With ``$AUTOTUNE_DATA_DIR`` set, ``$AUTOTUNE_DATA_DIR/<package>/<relative>`` is used when it
    exists (the same file, copied out of the wheel); otherwise the installed package is asked.
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override and (Path(override) / package / relative).is_file():
        return Path(override) / package / relative
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        also = (f" (nor is {Path(override) / package / relative} there, under "
                f"${DATA_DIR_ENV})" if override else "")
        raise UserError(
            f"the package {package!r}, which holds the data of this task, is not installed"
            f"{also}. Install it with: {install}"
        )
    path = Path(locations[0]) / relative
    if not path.is_file():
        raise UserError(
            f"the data file {relative!r} is missing from the installed package {package!r} "
            f"(looked for {path}). Reinstall it with: {install} --force-reinstall"
        )
    return path
