"""A one-batch dry run of a task before a search spends its budget on it.

A user's task can be wrong in ways that only show when it runs: a batch size its training set
cannot fill, a Dataset whose samples cannot be read or collated into a batch, samples that do
not fit the model, a loss or metric that raises or returns something that is not a number.
Each of these would fail every trial of a search in the same way; ``dry_run`` finds it first,
on one small batch in fp32, and raises one ``UserError`` that names the task, the step that
failed and the error, so the search stops before any trial.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch.utils.data import Subset

from autotune.errors import UserError
from autotune.tasks._base import MetricError, Task, evaluate_metric, move_batch


def dry_run(task: Task, batch_size: int, device: str = "cpu") -> None:
    """Build the model, take one training step's loss and gradients on ``batch_size`` training
    examples, and measure the metric on the first validation batch; ``UserError`` on the first
    thing that fails."""
    name = f"task {task.name!r}"
    if task.num_train < batch_size:
        raise UserError(
            f"{name} has {task.num_train} training examples, fewer than its baseline batch "
            f"size {batch_size}: a batch cannot be filled. Give the task more training data or "
            "a smaller default_batch_size.")
    if task.num_validation < 1:
        raise UserError(f"{name} has no validation examples: its metric cannot be measured")
    dev = torch.device(device)
    rng = torch.get_rng_state()
    try:
        model = _step("build_model()", name, lambda: task.build_model().to(dev))
        model.train()
        batch = move_batch(_first_batch(task, batch_size, name), dev)
        loss = _step(f"loss(model, batch) on {batch_size} training examples", name,
                     lambda: task.loss(model, batch))
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise UserError(f"{name}: loss(model, batch) must return a scalar tensor, got "
                            f"{type(loss).__name__}{_shape(loss)}")
        if not math.isfinite(float(loss.detach())):
            raise UserError(f"{name}: loss(model, batch) is {float(loss.detach())} on the first "
                            "training batch, before any training")
        _step("loss.backward()", name, loss.backward)
        head = _first_validation_batches(task)
        try:
            evaluate_metric(head, model, dev)
        except MetricError as exc:
            raise UserError(f"{name}: its metric fails on the first validation batch: {exc}") \
                from None
        except Exception as exc:  # noqa: BLE001 - the user's predict: any failure is named
            raise UserError(f"{name}: measuring its metric ({task.metric}) on the first "
                            f"validation batch raised {type(exc).__name__}: {_first(exc)}") \
                from None
    finally:
        torch.set_rng_state(rng)


def check_teacher(task: Task, batch_size: int, device: str = "cpu", *,
                  knob: str = "distill_weight") -> None:
    """For a search whose recipes may distil (``knob`` is what asks for it, named in the
    message): the task has a teacher, it loads (trained now if it is not cached: its one-time
    cost, before any trial), and on the first training batch (both models in eval mode) its
    logits have the model's shape and ``outputs``' loss is ``loss``'s. ``UserError``
    otherwise, before any trial."""
    name = f"task {task.name!r}"
    if task.teacher is None or task.outputs is None:
        missing = "teacher" if task.teacher is None else "outputs function"
        raise UserError(
            f"{knob} can be > 0 in this search, but {name} has no {missing}: distillation "
            "needs a teacher (Task.teacher) and the loss and logits of one forward pass "
            "(Task.outputs). Remove distill_weight from the search space (or set it to 0), or "
            "give the task a teacher.")
    teacher = _step("teacher()", name, task.teacher)
    if not isinstance(teacher, torch.nn.Module):
        raise UserError(f"{name}: teacher() returned {type(teacher).__name__}, not a "
                        "torch.nn.Module")
    dev = torch.device(device)
    rng = torch.get_rng_state()
    try:
        model = task.build_model().to(dev).eval()
        teacher = teacher.to(dev).eval()
        batch = move_batch(_first_batch(task, batch_size, name), dev)
        outputs = task.outputs
        with torch.no_grad():
            loss, logits = _step("outputs(model, batch)", name, lambda: outputs(model, batch))
            _, taught = _step("outputs(teacher, batch)", name, lambda: outputs(teacher, batch))
            plain = float(task.loss(model, batch))
    finally:
        torch.set_rng_state(rng)
    if not math.isclose(float(loss), plain, rel_tol=1e-4, abs_tol=1e-6):
        raise UserError(f"{name}: outputs(model, batch) gives the loss {float(loss):.6g} but "
                        f"loss(model, batch) {plain:.6g} on the same batch; outputs must return "
                        "the task's own loss (with the logits of the same forward pass)")
    if logits.shape != taught.shape:
        raise UserError(f"{name}: the teacher's logits have shape {tuple(taught.shape)} but the "
                        f"model's {tuple(logits.shape)} on the same batch; a teacher must "
                        "predict the same classes over the same positions")


def _first_batch(task: Task, batch_size: int, name: str) -> Any:
    """The first ``batch_size`` training examples as one batch: sliced tensors, or a
    Dataset's first samples through the task's collate function."""
    if not task.is_dataset:
        return [t[:batch_size] for t in task.train]
    samples = [_step(f"reading training sample {i} (the Dataset's __getitem__)", name,
                     lambda i=i: task.train[i]) for i in range(batch_size)]
    what = "collate" if task.collate is not None else "torch's default_collate (no collate given)"
    return _step(f"{what} on the first {batch_size} training samples", name,
                 lambda: task.collate_fn(samples),
                 hint="The samples cannot be made into one batch: give the task a collate "
                      "function that pads or stacks them (Task(collate=...)).")


def _first_validation_batches(task: Task) -> Task:
    """The task with only its first validation batch (the dry run measures no more)."""
    n = min(task.eval_batch_size, task.num_validation)
    if task.is_dataset:
        return dataclasses.replace(task, validation=Subset(task.validation, range(n)))
    return dataclasses.replace(task, validation=tuple(t[:n] for t in task.validation))


def _step(what: str, name: str, fn, hint: str = ""):  # noqa: ANN001, ANN202 - a thunk
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the user's code: any failure is named
        raise UserError(f"{name}: {what} raised {type(exc).__name__}: {_first(exc)}. "
                        + (f"{hint} " if hint else "")
                        + "Every trial would fail the same way, so the search does not start.") \
            from None


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


def _shape(value: object) -> str:
    return f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""
