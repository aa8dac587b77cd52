"""Pipeline parallelism: the model split into one stage per worker, micro-batches streamed through.

A recipe with ``parallelism: pipeline`` and ``workers: N`` cuts the model into N stages at
evenly spaced blocks of its main ``nn.ModuleList`` (the transformer layers; ``find_blocks``),
with ``torch.distributed.pipelining``: the task's loss is wrapped as a module
(``LossModule``: ``forward(*batch) -> task.loss(model, batch)``), traced with
``torch.export`` by ``pipeline(...)`` and split at ``SplitPoint.BEGINNING`` of the chosen
blocks. Worker ``r`` keeps stage ``r``; stage 0 takes the batch, the last stage outputs the
micro-batch's mean loss, and inputs a later stage needs (the labels) travel with the
activations, as in Hugging Face models.

One optimizer step (``PipelineRunner.step``) runs the schedule (``ScheduleGPipe`` or
``Schedule1F1B``, ``pipeline_schedule``) once per micro-batch of the accumulation, each
split into ``pipeline_microbatches`` pieces; every piece's loss is divided by
``pipeline_microbatches x accumulation_steps`` (the schedule sums gradients), so the step's
gradient is the mean over the whole ``batch_size x accumulation_steps`` examples, as a single
device's. Each stage has the recipe's optimizer and schedule over its own parameters;
gradient clipping uses the global norm across stages (an all-reduce of the squared norms).
Every worker sees the same batch (the loop does not shard data by rank in this mode).

Weights tied across stages (GPT-2's embedding and output head): tracing gives each stage its
own copy; their gradients are summed across stages before the update, so every copy takes
the same step, as the tied weight would (``_sync_tied``).

Evaluation needs the whole model: every worker keeps the full model it built (its own stage's
parameters are the same tensors), and ``evaluation_model`` broadcasts each stage's current
parameters from the worker that trains them into every worker's full copy, off the training
clock. Every worker then evaluates the same model, so all take the same branch after it.
The price: each device also holds the other stages' weights (not their gradients or
optimizer state); the memory prediction counts them.

Structured pruning at step 0 (``prune_ratio``, ``prune_after_steps`` 0) is applied to the
model before it is split (gpt: the same validation loss after 5 steps as one device, measured).
Not supported (``autotune.knobs.unsupported_reason`` or the recipe's rules say why): fp16
(needs a loss scaler across stages), compile, checkpointing, offload, weight sparsity,
pruning during training and distillation. A model without
a ``ModuleList`` of at least N blocks cannot be split; a task whose batches change shape
(padding to each batch's longest sample) fails at the first batch whose shape differs from
the traced one, with that reason: the stages exchange activations of fixed shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from autotune.knobs import autocast_context, build_optimizer, build_scheduler, loss_value
from autotune.recipe import Recipe
from autotune.tasks import Batch, Task

__all__ = ["LossModule", "PipelineRunner", "PipelineSplitError", "find_blocks",
           "prepare_pipeline", "split_points", "split_problem"]


class PipelineSplitError(Exception):
    """The model cannot be split into the recipe's stages (the trial is infeasible)."""


class LossModule(nn.Module):
    """The task's loss as a module, so that the traced graph ends in the loss: the last stage
    outputs one micro-batch's mean loss, and the labels flow through the stages as inputs."""

    def __init__(self, model: nn.Module, loss: Any) -> None:
        super().__init__()
        self.model = model
        self._loss = loss

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        # Copies made first are computed in stage 0, so a later stage that needs an input
        # (the labels) receives it from stage 0 like an activation: torch's traced stages
        # take the batch's own tensors in the first stage only.
        return self._loss(self.model, [t.clone() for t in batch])


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The model's main ``ModuleList`` (the one with the most parameters: the transformer
    layers) and its qualified name; None when the model has none."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module):
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, name, module)
    return None if best is None else (best[1], best[2])


def split_points(blocks: int, stages: int) -> list[int]:
    """Indices of the blocks that begin stages 1..N-1: evenly spaced, so each stage has
    ``blocks / stages`` blocks, the first and last also the embeddings and the head."""
    return [round(i * blocks / stages) for i in range(1, stages)]


def split_problem(model: nn.Module, stages: int) -> str | None:
    """Why ``model`` cannot be split into ``stages`` stages (None when it can)."""
    found = find_blocks(model)
    if found is None:
        return (f"pipeline splits the model at the blocks of its nn.ModuleList (transformer "
                f"layers); {type(model).__name__} has no ModuleList")
    name, blocks = found
    if len(blocks) < stages:
        return (f"pipeline with {stages} workers needs at least {stages} blocks in the "
                f"model's ModuleList {name!r}; it has {len(blocks)} (use fewer workers)")
    return None


@dataclass
class PipelineRunner:
    """One worker's stage of a pipeline recipe: its schedule, optimizer and the full model
    kept for evaluation (see the module docstring)."""

    model: nn.Module
    """The full model this worker built; its own stage's parameters are shared with it."""
    stage_module: nn.Module
    schedule: Any
    recipe: Recipe
    device: torch.device
    rank: int
    stages: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    input_shapes: list[tuple[int, ...]]
    """The traced micro-batch's shapes (a piece of one micro-batch), which every batch must
    have: the stages exchange activations of fixed shapes."""
    stage_params: dict[str, nn.Parameter]
    """This stage's parameters by the full model's canonical name (a tied weight by the name
    ``named_parameters`` gives it first)."""
    owners: dict[str, int]
    """Canonical parameter name -> the first stage that holds it (it broadcasts it)."""
    tied: dict[str, torch.Size] = field(default_factory=dict)
    """Canonical names (and shapes) of parameters held by more than one stage (tied
    weights)."""
    grad_norm: torch.Tensor | None = None

    def step(self, micro_batches: Sequence[Batch], strict: bool,
             lazy: bool = False) -> float | torch.Tensor:
        """One optimizer step over ``micro_batches`` (the accumulation), each streamed through
        the pipeline in ``pipeline_microbatches`` pieces; returns the mean loss (broadcast
        from the last stage, so every worker returns the same); ``lazy``: as a tensor on the
        device, unread and unchecked (``autotune.knobs.optimizer_step``)."""
        recipe = self.recipe
        losses: list[torch.Tensor] = []
        for batch in micro_batches:
            self._check_shapes(batch)
            step_losses: list[torch.Tensor] = []
            with autocast_context(recipe.precision, self.device.type):
                if self.rank == 0:
                    self.schedule.step(*batch, return_outputs=False)
                elif self.rank == self.stages - 1:
                    target = torch.zeros(len(batch[0]), device=self.device)
                    self.schedule.step(target=target, losses=step_losses, return_outputs=False)
                else:
                    self.schedule.step(return_outputs=False)
            losses += step_losses
        _sync_tied(self.stage_params, self.tied, self.device)
        if recipe.grad_clip > 0:
            self.grad_norm = _clip_global(self.stage_params, self.tied, self.owners,
                                          self.rank, recipe.grad_clip, self.device)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        # Each piece's loss was divided by pieces x accumulation for the backward pass.
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        if losses:
            total += torch.stack([x.detach().double() for x in losses]).sum()
        dist.broadcast(total, src=self.stages - 1)
        if lazy:
            return total.float()
        return loss_value(total, int(self.scheduler.last_epoch), strict)

    def _check_shapes(self, batch: Batch) -> None:
        pieces = self.recipe.pipeline_microbatches
        got = [(len(t) // pieces, *t.shape[1:]) for t in batch]
        if got != self.input_shapes:
            raise PipelineSplitError(
                f"pipeline needs every batch in the traced shapes {self.input_shapes} (per "
                f"pipeline micro-batch); got {got}: the stages exchange activations of fixed "
                "shapes, so a task that pads each batch to its longest sample cannot be "
                "pipelined (pad to a fixed length, or use another parallelism)")

    def evaluation_model(self) -> nn.Module:
        """The full model with every stage's current parameters (broadcast from the stage
        that trains them into every worker's copy), for evaluation."""
        with torch.no_grad():
            full = dict(self.model.named_parameters())
            for name, param in full.items():
                owner = self.owners[name]
                if owner == self.rank and name in self.stage_params:
                    source = self.stage_params[name]
                    if source is not param:
                        param.copy_(source)
                dist.broadcast(param.data, src=owner)
        return self.model

    def full_state(self) -> dict[str, torch.Tensor]:
        """Every parameter, current, by the full model's name (in fp32)."""
        model = self.evaluation_model()
        return {n: p.detach().clone().float() for n, p in model.named_parameters()}


def prepare_pipeline(model: nn.Module, recipe: Recipe, device: torch.device,
                     task: Task, example: Batch) -> PipelineRunner:
    """Split ``model`` (on ``device``, seeded identically on every worker) into the recipe's
    stages, keep this worker's, and build its schedule and optimizer. ``example`` is one
    micro-batch of the task (``batch_size`` examples), traced in the recipe's autocast."""
    # lazy: torch.distributed.pipelining takes 1.2 s to import (measured), pipeline recipes only
    from torch.distributed.pipelining import (
        Schedule1F1B,
        ScheduleGPipe,
        SplitPoint,
        pipeline,
    )

    stages, rank = recipe.workers, dist.get_rank()
    problem = split_problem(model, stages)
    if problem:
        raise PipelineSplitError(problem)
    name, blocks = find_blocks(model)  # type: ignore[misc]
    pieces = recipe.pipeline_microbatches
    piece = [t[: len(t) // pieces].to(device) for t in example]
    prefix = f"model.{name}." if name else "model."
    spec = {f"{prefix}{i}": SplitPoint.BEGINNING for i in split_points(len(blocks), stages)}
    wrapper = LossModule(model, task.loss)
    try:
        with autocast_context(recipe.precision, device.type):
            pipe = pipeline(wrapper, mb_args=tuple(piece), split_spec=spec)
    except Exception as exc:
        raise PipelineSplitError(
            f"torch.export could not trace the model and loss for pipeline splitting "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
            "use another parallelism") from exc
    if pipe.num_stages != stages:
        raise PipelineSplitError(f"splitting gave {pipe.num_stages} stages, not {stages}")
    canonical = _canonical_names(model)
    full = dict(model.named_parameters())
    holders: dict[str, list[int]] = {}
    for s in range(stages):
        for full_name in _stage_names(pipe.get_stage_module(s), canonical):
            holders.setdefault(full_name, []).append(s)
    stage_module = pipe.get_stage_module(rank)
    stage_params = {canonical[n]: p for n, p in _stage_named(stage_module, canonical)}
    stage = pipe.build_stage(rank, device)
    scale = 1.0 / (pieces * recipe.accumulation_steps)
    schedule_cls = ScheduleGPipe if recipe.pipeline_schedule == "gpipe" else Schedule1F1B
    # scale_grads=False: the loss is divided here, once per piece of every accumulation step
    # (the schedule's own scaling would divide earlier accumulation steps again).
    schedule = schedule_cls(stage, n_microbatches=pieces, scale_grads=False,
                            loss_fn=lambda out, _target: out * scale)
    optimizer = build_optimizer(list(stage_params.values()), recipe)
    return PipelineRunner(
        model=model, stage_module=stage_module, schedule=schedule, recipe=recipe,
        device=device, rank=rank, stages=stages, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, recipe),
        input_shapes=[tuple(t.shape) for t in piece], stage_params=stage_params,
        owners={n: min(h) for n, h in holders.items()} | _unheld(model, holders),
        tied={n: full[n].shape for n in sorted(holders) if len(holders[n]) > 1},
    )


def _canonical_names(model: nn.Module) -> dict[str, str]:
    """Every name of every parameter (``model.``-prefixed, as in the traced wrapper) -> its
    canonical name (the first ``named_parameters`` gives it)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(p), n)
        out[f"model.{n}"] = first[id(p)]
    return out


def _stage_named(stage_module: nn.Module,
                 canonical: dict[str, str]) -> list[tuple[str, nn.Parameter]]:
    """The stage's trainable parameters known to the full model, one per canonical name."""
    seen: set[str] = set()
    out = []
    for n, p in stage_module.named_parameters():
        if n in canonical and canonical[n] not in seen and p.requires_grad:
            seen.add(canonical[n])
            out.append((n, p))
    return out


def _stage_names(stage_module: nn.Module, canonical: dict[str, str]) -> list[str]:
    return [canonical[n] for n, _ in _stage_named(stage_module, canonical)]


def _unheld(model: nn.Module, holders: dict[str, list[int]]) -> dict[str, int]:
    """Parameters no stage trains (unused by the loss): stage 0 broadcasts its copy."""
    return {n: 0 for n, _ in model.named_parameters() if n not in holders}


def _sync_tied(params: dict[str, nn.Parameter], tied: dict[str, torch.Size],
               device: torch.device) -> None:
    """Sum the gradients of tied weights over the stages that hold a copy (every worker takes
    part in each all-reduce, in the same order; one that holds no copy adds zeros)."""
    for name, shape in tied.items():
        local = params.get(name)
        if local is not None and local.grad is not None:
            grad = local.grad.detach().float().clone()
        else:
            grad = torch.zeros(shape, device=device)
        dist.all_reduce(grad)
        if local is not None:
            local.grad = grad.to(local.dtype)


def _clip_global(params: dict[str, nn.Parameter], tied: dict[str, torch.Size],
                 owners: dict[str, int], rank: int, max_norm: float,
                 device: torch.device) -> torch.Tensor:
    """Clip by the global gradient norm over all stages: each stage's squared norm summed
    (all-reduce), a tied weight counted once (by its owner). Returns the norm before
    clipping, the same on every worker."""
    counted = [p.grad for n, p in params.items()
               if p.grad is not None and (n not in tied or owners[n] == rank)]
    local = (torch.nn.utils.get_total_norm(counted, norm_type=2.0).float() ** 2 if counted
             else torch.zeros((), device=device))
    squared = local.reshape(()).to(device).clone()
    dist.all_reduce(squared)
    norm = squared.sqrt()
    grads = [p for p in params.values() if p.grad is not None]
    torch.nn.utils.clip_grads_with_norm_(grads, max_norm, norm)
    return norm
