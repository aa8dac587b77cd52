"""Knowledge distillation (``distill_weight``, ``distill_temperature``): learn from a teacher.

The student's loss becomes ``(1 - w) x task loss + w x T^2 x KL(teacher_T || student_T)``,
where ``_T`` are the two models' output distributions softened by temperature ``T`` (Hinton,
Vinyals and Dean, 2015: the ``T^2`` keeps the term's gradients on the scale of the task loss's
as ``T`` changes). The KL divergence is averaged over the rows of the logits: one per example
for a classifier, one per real (not padded) token for a token task.

What it costs: one forward pass of the teacher per micro-batch, without gradients, inside the
step (so on the training clock), and the teacher's weights plus that forward pass's
activations in memory (``autotune.memory`` traces both). What it can buy: a student that
reaches its target in fewer steps, because the teacher's soft targets carry more information
per example than hard labels.

The pieces, each a pure function:

- ``distillation_term``: ``T^2 x KL`` between two sets of logits;
- ``distillation_loss``: wraps a task's ``outputs`` function (mean task loss and logits of one
  forward pass) into the step's ``LossFn``: the student runs once, the teacher once under
  ``torch.no_grad()`` (and the step's autocast, which wraps the whole loss);
- ``step_loss``: the loss a trial's step takes for a task and recipe (the task's own loss, or
  the distillation loss);
- ``distill_problem``, ``load_teacher``, ``freeze_teacher``: whether a task can distil with a
  recipe, its teacher for a run, and the teacher made ready for a device (moved once, eval
  mode, ``requires_grad_(False)``: never in an optimizer, never wrapped by DDP/FSDP/DeepSpeed,
  never compiled by the ``compile`` knob).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autotune.knobs.step import LossFn
from autotune.recipe import Recipe
from autotune.tasks import Batch, OutputsFn, Task


class DistillError(ValueError):
    """A recipe asks for distillation that its task or setting cannot give (no teacher)."""


def distillation_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """``T^2 x KL(softmax(teacher/T) || softmax(student/T))``, averaged over rows.

    Logits of any shape ``(..., classes)`` are taken as rows of ``classes`` (one per example,
    or per token); the divergence is summed over classes and averaged over rows. Computed in
    fp32 whatever the autocast (a softmax over many classes in bf16 loses the small
    probabilities that soft targets are about)."""
    if student_logits.shape != teacher_logits.shape:
        raise DistillError(
            f"the student's logits have shape {tuple(student_logits.shape)} but the teacher's "
            f"{tuple(teacher_logits.shape)}: a teacher must predict the same classes over the "
            "same positions as the model")
    classes = student_logits.shape[-1]
    t = float(temperature)
    student = F.log_softmax(student_logits.float().reshape(-1, classes) / t, dim=-1)
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, classes) / t, dim=-1)
    return t * t * F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def distillation_loss(outputs: OutputsFn, teacher: nn.Module, recipe: Recipe) -> LossFn:
    """The step's loss with distillation: ``(1 - w) x task loss + w x distillation_term``.

    ``outputs(model, batch)`` returns ``(mean task loss, logits)`` of one forward pass
    (``Task.outputs``); it is called once on the model being trained and once, without
    gradients, on ``teacher`` (which must take the same batches and predict the same
    logits' shape). ``w`` and ``T`` are the recipe's ``distill_weight`` and
    ``distill_temperature``."""
    weight, temperature = recipe.distill_weight, recipe.distill_temperature

    def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
        task_loss, logits = outputs(model, batch)
        with torch.no_grad():
            _, teacher_logits = outputs(teacher, batch)
        soft = distillation_term(logits, teacher_logits, temperature)
        return (1.0 - weight) * task_loss + weight * soft

    return loss_fn


def step_loss(task: Task, teacher: nn.Module | None, recipe: Recipe) -> LossFn:
    """The loss a training step of ``recipe`` takes on ``task``: ``task.loss``, or with a
    teacher (``load_teacher``), the distillation loss over ``task.outputs``."""
    if teacher is None:
        return task.loss
    if task.outputs is None:
        raise DistillError(distill_problem(task, recipe) or "the task has no outputs function")
    return distillation_loss(task.outputs, teacher, recipe)


def distill_problem(task: Task, recipe: Recipe) -> str | None:
    """Why ``recipe`` cannot distil on ``task`` (None when it can, or does not distil)."""
    if recipe.distill_weight <= 0:
        return None
    if task.teacher is None or task.outputs is None:
        missing = "teacher" if task.teacher is None else "outputs function"
        return (f"distill_weight {recipe.distill_weight:g} needs a teacher, but task "
                f"{task.name!r} has no {missing} (Task.teacher and Task.outputs); set "
                "distill_weight 0, or give the task a teacher")
    return None


def load_teacher(task: Task, recipe: Recipe) -> nn.Module | None:
    """The task's teacher for a run of ``recipe`` (on the CPU, frozen, in eval mode), or None
    when the recipe does not distil. Raises ``DistillError`` when it distils and the task has
    no teacher, or its teacher function returns something that is not a module."""
    if recipe.distill_weight <= 0:
        return None
    problem = distill_problem(task, recipe)
    if problem:
        raise DistillError(problem)
    assert task.teacher is not None  # distill_problem checked it
    teacher = task.teacher()
    if not isinstance(teacher, nn.Module):
        raise DistillError(f"task {task.name!r}: its teacher function returned "
                           f"{type(teacher).__name__}, not a torch.nn.Module")
    return freeze_teacher(teacher)


def freeze_teacher(teacher: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """``teacher`` in eval mode with no parameter requiring gradients, moved to ``device``
    (in place, as ``Module.to`` does; once per run) when one is given. Returns it."""
    if device is not None:
        teacher = teacher.to(device)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
