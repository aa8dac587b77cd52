"""Parallel modes of a recipe: the model, optimizer and step of one worker among several.

``prepare(model, recipe, device)`` returns a ``Prepared`` whose ``step(task, micro_batches)``
does one optimizer step the way the recipe's ``parallelism`` asks:

- ``single``: the plain step (``autotune.knobs.optimizer_step``, the one training step).
- ``ddp``: ``DistributedDataParallel``: every worker holds the whole model; gradients are
  averaged across workers (all-reduce) once per optimizer step (``no_sync`` on the other
  micro-batches of an accumulation).
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on each block of a ``ModuleList``
  (transformer layers) and on the root: parameters, gradients and optimizer state are sharded.
- ``zero1``/``zero2``/``zero3``: DeepSpeed ZeRO stage 1/2/3 (optimizer state / + gradients /
  + parameters sharded), with CPU offload of optimizer state (and for ZeRO-3 parameters) when
  ``recipe.offload``. DeepSpeed is imported only here, only for these modes. The engine steps
  itself, but through the shared pieces of the step (``micro_batch_loss``, ``loss_value``,
  ``apply_masks``).
- ``pipeline``: the model cut into one stage per worker (``autotune.train.pipeline``); every
  worker takes the same batches, so one step covers ``batch_size x accumulation_steps``
  examples; evaluation runs on the full model, gathered (``Prepared.evaluation_model``).

Every mode steps with the same optimizer, learning-rate schedule, gradient clipping and
``weight_sparsity`` masks as a single worker (ZeRO clips in DeepSpeed's engine, from its config's
``gradient_clipping``; the others in the shared step, after the gradients are averaged).
In the data-parallel modes each worker trains on its own micro-batches, so one step covers
``batch_size x accumulation_steps x workers`` examples. The contract (tested for every mode;
pipeline's in tests/test_pipeline.py):
from the same weights and data, one step equals the single-process step on the concatenated
batch, within float tolerance.

The process group must be initialised before ``prepare`` (``init_worker``).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from autotune.cache import cache_dir
from autotune.knobs import (
    PruneResult,
    UnitGroup,
    apply_checkpointing,
    apply_masks,
    apply_structured_pruning,
    build_optimizer,
    build_scheduler,
    channels_last_batch,
    compile_model,
    freeze_teacher,
    inactive_knobs,
    loss_value,
    make_grad_scaler,
    micro_batch_loss,
    optimizer_step,
    prune_by_magnitude,
    prune_during_training,
    set_tf32,
    step_loss,
    to_channels_last,
    use_compile_cache,
    zero_config,
)
from autotune.memory import largest_batch
from autotune.recipe import ZERO_MODES, Recipe
from autotune.tasks import Task
from autotune.train.pipeline import PipelineRunner, prepare_pipeline

__all__ = ["Prepared", "extensions_dir", "init_worker", "prepare"]


def init_worker(
    rank: int, world_size: int, master_addr: str, master_port: int, device_type: str
) -> None:
    """Join the process group: NCCL between GPUs, gloo on CPUs. On GPUs gloo serves the
    CPU tensors too (the training loop's per-step agreement on the clock, a host-side
    exchange that does not wait for the devices)."""
    os.environ.update(
        MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
    )
    if device_type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=10))


@dataclass
class Prepared:
    """One worker's model and optimizer, configured for the recipe's parallel mode."""

    model: nn.Module
    """What to call for forward passes (the DDP/FSDP/DeepSpeed wrapper where there is one)."""
    recipe: Recipe
    device: torch.device
    optimizer: Any = None
    scheduler: Any = None
    scaler: torch.amp.GradScaler | None = None
    masks: dict[nn.Parameter, torch.Tensor] = field(default_factory=dict)
    engine: Any = None
    """The DeepSpeed engine for ZeRO modes."""
    channels_last: bool = False
    """Whether the model's weights were put in channels-last order, so the step puts each
    micro-batch's 4-D inputs there too (the recipe's knob, on a model it acts on)."""
    inactive: list[str] = field(default_factory=list)
    """The recipe's knobs that cannot act in this run, ``knob: why`` each
    (``autotune.knobs.inactive_knobs``): a trial records them."""
    compiled: bool = False
    """Whether the model was compiled (the recipe's ``compile``): its first steps compile."""
    grad_norm: torch.Tensor | None = None
    """The global gradient norm before clipping at the last optimizer step, with ``grad_clip``
    > 0 (None before the first step or without clipping). A tensor, left on the device: read
    it (``float(...)``) only when reporting, since reading waits for the device."""
    prune_groups: list[UnitGroup] = field(default_factory=list)
    """With ``prune_ratio`` > 0 and ``prune_after_steps`` > 0: the unit groups found at setup
    that ``prune_units`` cuts once that many optimizer steps are done (empty otherwise, and
    after the cut)."""
    pipeline: PipelineRunner | None = None
    """This worker's stage of a ``pipeline`` recipe (``autotune.train.pipeline``): it steps
    and evaluates instead of the fields above."""
    teacher: nn.Module | None = None
    """The frozen teacher of a recipe that distils (``distill_weight`` > 0), on ``device``:
    each step's loss runs its forward pass too (``autotune.knobs.step_loss``). It is never
    wrapped, sharded, compiled or given to the optimizer."""

    def step(
        self, task: Task, micro_batches: Sequence[Sequence[torch.Tensor]], strict: bool = True,
        lazy: bool = False,
    ) -> float | torch.Tensor:
        """One optimizer step over this worker's micro-batches; returns their mean loss.

        ``strict``: raise ``Diverged`` on a NaN/inf loss at once; otherwise return NaN after
        the step (see ``autotune.knobs.optimizer_step``). ``lazy``: return the loss as a
        0-dim tensor left on the device, unchecked, so that the step does not wait for a GPU
        (the training loop checks the sum of the losses at evaluation points)."""
        if self.engine is not None:
            return self._engine_step(task, micro_batches, strict, lazy)
        if self.pipeline is not None:
            loss = self.pipeline.step(micro_batches, strict, lazy)
            self.grad_norm = self.pipeline.grad_norm
            return loss
        sync = getattr(self.model, "no_sync", None)
        return optimizer_step(
            self.model, step_loss(task, self.teacher, self.recipe), micro_batches,
            self.optimizer, self.scheduler, self.recipe, self.device.type,
            scaler=self.scaler, masks=self.masks,
            skip_sync=(lambda: sync()) if sync is not None else None, strict=strict,
            channels_last=self.channels_last, grad_norm=self._keep_grad_norm, lazy=lazy,
        )

    def _keep_grad_norm(self, norm: torch.Tensor) -> None:
        self.grad_norm = norm.detach()

    def prune_units(self) -> PruneResult | None:
        """The structured prune of ``prune_after_steps`` > 0 (``prune_groups``), once, between
        optimizer steps: the model shrinks in place and the optimizer, scheduler and
        ``weight_sparsity`` masks are rebuilt around it with their state sliced
        (``autotune.knobs.prune_during_training``), so training goes on where it was. A
        compiled model recompiles at its next step (on the training clock, as a user's run
        pays it). Single-process only (a recipe rule keeps it from parallel modes). Returns
        what was removed; None when there is nothing (left) to cut."""
        if not self.prune_groups:
            return None
        if self.engine is not None or _unwrap(self.model) is not self.model:
            raise RuntimeError("pruning during training runs in a single process only "
                               f"(parallelism {self.recipe.parallelism!r})")
        result, self.optimizer, self.scheduler, self.masks = prune_during_training(
            self.model, self.optimizer, self.scheduler, self.recipe, self.prune_groups,
            self.masks)
        self.prune_groups = []
        return result

    def _engine_step(
        self, task: Task, micro_batches: Sequence[Sequence[torch.Tensor]], strict: bool,
        lazy: bool = False,
    ) -> float | torch.Tensor:
        """DeepSpeed's variant of the step: the engine accumulates (it divides by the
        accumulation count itself), scales fp16 losses and steps at the last micro-batch; the
        loss, the finite check and the masks are the shared step's. The engine clips too
        (``gradient_clipping`` in its config), and keeps the norm it clipped by."""
        total: float | torch.Tensor = 0.0
        loss_fn = step_loss(task, self.teacher, self.recipe)
        for batch in micro_batches:
            if self.channels_last:
                batch = channels_last_batch(batch)
            # DeepSpeed's bf16/fp16 keep 16-bit weights; autocast casts float inputs too.
            loss = micro_batch_loss(self.engine, loss_fn, batch, self.recipe.precision,
                                    self.device.type)
            total = total + (loss.detach().float() if lazy
                             else loss_value(loss, self.engine.global_steps, strict))
            self.engine.backward(loss)
            self.engine.step()
        apply_masks(self.masks)
        if self.recipe.grad_clip > 0:
            norm = self.engine.get_global_grad_norm()
            if norm is not None:
                self.grad_norm = torch.as_tensor(norm).detach()
        return total / len(micro_batches)

    def evaluation_model(self) -> nn.Module:
        """The model to evaluate: ``model``, except for a pipeline, whose stages' current
        parameters are first gathered into every worker's full copy (off the clock)."""
        if self.pipeline is not None:
            return self.pipeline.evaluation_model()
        return self.model

    def full_state(self) -> dict[str, torch.Tensor]:
        """Every parameter gathered in full on every worker (for tests and checkpoints)."""
        if self.pipeline is not None:
            return self.pipeline.full_state()
        if self.engine is not None and self.recipe.parallelism == "zero3":
            import deepspeed  # lazy: heavy optional dependency

            params = list(self.engine.module.parameters())
            with deepspeed.zero.GatheredParameters(params):
                return {n: p.detach().clone().float()
                        for n, p in self.engine.module.named_parameters()}
        module = self.engine.module if self.engine is not None else _unwrap(self.model)
        out = {}
        for name, p in module.named_parameters():
            tensor = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[name] = tensor.detach().clone().float()
        return out


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def prepare(model: nn.Module, recipe: Recipe, device: torch.device,
            teacher: nn.Module | None = None, *, task: Task | None = None) -> Prepared:
    """Configure ``model`` (already seeded and built, on the CPU or device) for the recipe:
    TF32 for the process, the memory format, structured pruning (``prune_ratio`` at step 0;
    for a later step its unit groups are kept in ``prune_groups``), activation checkpointing
    and ``weight_sparsity`` masks first (on the plain model), then the parallel mode,
    ``torch.compile`` (``compile``) and the optimizer (in the recipe's implementation,
    ``fused_optimizer``).

    Compiling is in place (``autotune.knobs.compile_model``), where torch advises for each
    mode: ``single`` and ``ddp`` compile the plain model (DDP's forward calls it, and dynamo,
    seeing DDP's forward active, splits the graph at DDP's gradient buckets so all-reduces
    still overlap the backward pass: ``torch._dynamo.config.optimize_ddp``); ``fsdp`` compiles
    each sharded block (``_compile_sharded``); ZeRO modes compile DeepSpeed's engine
    (``engine.compile``). Nothing is compiled here: torch compiles at the first forward pass.

    ``teacher`` (``autotune.knobs.load_teacher``, for a recipe that distils) is moved to the
    device once and frozen, in channels-last order when the model is, and kept beside the
    model, outside every wrapper and the optimizer.

    ``pipeline`` splits the model into one stage per worker (``autotune.train.pipeline``); it
    needs ``task``, whose loss ends the last stage and whose largest batch is traced.
    """
    set_tf32(recipe.tf32)
    model = model.to(device)
    inactive = inactive_knobs(recipe, model, device)
    channels_last = recipe.channels_last and to_channels_last(model)
    if teacher is not None:
        teacher = freeze_teacher(teacher, device)
        if channels_last:
            to_channels_last(teacher)
    # Structured pruning on the plain model, before checkpointing, wrappers and compiling.
    # At step 0 every worker cuts the same seeded weights the same way, so every mode gets it.
    prune_groups, no_prune = apply_structured_pruning(model, recipe)
    if no_prune:
        inactive.append(no_prune)
    if recipe.checkpointing:
        apply_checkpointing(model)
    masks = prune_by_magnitude(model, recipe.weight_sparsity)
    mode = recipe.parallelism
    if mode == "pipeline":
        if task is None:
            raise ValueError("prepare: a pipeline recipe needs the task (task=...)")
        runner = prepare_pipeline(model, recipe, device, task,
                                  largest_batch(task, recipe.batch_size))
        return Prepared(model=model, recipe=recipe, device=device, pipeline=runner,
                        optimizer=runner.optimizer, scheduler=runner.scheduler,
                        inactive=inactive)
    if mode in ZERO_MODES:
        prepared = _prepare_zero(model, recipe, device, masks)
        prepared.channels_last, prepared.inactive = channels_last, inactive
        prepared.teacher = teacher
        prepared.compiled = _compile_engine(prepared.engine, recipe.compile)
        return prepared
    if mode == "ddp":
        compiled = compile_model(model, recipe.compile)  # the plain model, DDP's to call
        ids = [device.index] if device.type == "cuda" and device.index is not None else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    elif mode == "fsdp":
        names = {id(p): n for n, p in model.named_parameters()}
        by_name = {names[id(p)]: m for p, m in masks.items()}
        blocks = _fully_shard(model)
        masks = _shard_masks(model, by_name)
        compiled = _compile_sharded(model, blocks, recipe.compile)
    else:
        compiled = compile_model(model, recipe.compile)
    optimizer = build_optimizer(model.parameters(), recipe)
    return Prepared(
        model=model, recipe=recipe, device=device, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, recipe),
        scaler=make_grad_scaler(recipe.precision, device.type), masks=masks,
        channels_last=channels_last, inactive=inactive, compiled=compiled, teacher=teacher,
        prune_groups=prune_groups,
    )


def _compile_engine(engine: Any, mode: str) -> bool:
    """Compile a DeepSpeed engine's module in place (``engine.compile``, DeepSpeed 0.14 on);
    ``none`` leaves it eager. Returns whether it compiled."""
    if mode == "none":
        return False
    if not hasattr(engine, "compile"):
        raise RuntimeError(
            f"compile {mode!r} with ZeRO needs DeepSpeed's engine.compile (DeepSpeed 0.14 or "
            "newer); this DeepSpeed has none: upgrade it, or use compile none with ZeRO")
    use_compile_cache()
    engine.compile(compile_kwargs={"mode": mode})
    return True


def _fully_shard(model: nn.Module) -> list[nn.Module]:
    """FSDP2: shard each block of every ``ModuleList`` (transformer layers), then the root.
    Returns the blocks sharded on their own."""
    # lazy: torch.distributed.fsdp takes 0.4 s to import (measured), for FSDP recipes only
    from torch.distributed.fsdp import fully_shard

    blocks = []
    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                if any(p.requires_grad for p in block.parameters()):
                    fully_shard(block)
                    blocks.append(block)
    fully_shard(model)
    return blocks


def _compile_sharded(model: nn.Module, blocks: list[nn.Module], mode: str) -> bool:
    """Compile an FSDP2 model as torchtitan does: each sharded block's forward, with FSDP2's
    hooks (all-gather before, reshard after) eager around it; the root's forward only when no
    block was sharded on its own. The root's forward calls the blocks in a loop, and a loop
    that meets FSDP2's hooks makes dynamo give up the whole frame: compiled, the root would
    run eagerly (measured: no graph)."""
    if not blocks:
        return compile_model(model, mode)
    return all([compile_model(block, mode) for block in blocks])


def _shard_masks(
    model: nn.Module, masks: dict[str, torch.Tensor]
) -> dict[nn.Parameter, torch.Tensor]:
    """``weight_sparsity`` masks for the sharded parameters: each worker keeps the shard of
    each mask that matches its shard of the parameter (``distribute_tensor`` with the
    parameter's placements). ``fully_shard`` keeps parameter names, so masks are matched by
    name."""
    if not masks:
        return {}
    # lazy: torch.distributed.tensor takes 0.4 s to import (measured), for FSDP recipes only
    from torch.distributed.tensor import distribute_tensor

    params = dict(model.named_parameters())
    out: dict[nn.Parameter, torch.Tensor] = {}
    for name, mask in masks.items():
        param = params[name]
        sharded = distribute_tensor(mask.to(param.dtype), param.device_mesh, param.placements)
        out[param] = sharded.to_local() != 0
    return out


def extensions_dir() -> Path:
    """Where DeepSpeed's C++ ops are compiled once and reused (the first build takes 1-2
    minutes on a small CPU): ``$AUTOTUNE_CACHE_DIR/torch_extensions``, default
    ``~/.cache/autotune/torch_extensions``."""
    return cache_dir("torch_extensions")


def _prepare_zero(
    model: nn.Module, recipe: Recipe, device: torch.device,
    masks: dict[nn.Parameter, torch.Tensor],
) -> Prepared:
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if device.type == "cpu" else "cuda")
    import deepspeed  # lazy: heavy optional dependency (and reads DS_ACCELERATOR on import)

    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.offload and recipe.optimizer in ("adam", "adamw"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # lazy: heavy optional dependency

        optimizer: Any = DeepSpeedCPUAdam(
            params, lr=recipe.lr, weight_decay=recipe.weight_decay,
            adamw_mode=recipe.optimizer == "adamw",
        )
    else:
        optimizer = build_optimizer(params, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()))
    with contextlib.redirect_stdout(io.StringIO()):
        engine, ds_optimizer, _, ds_scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=zero_config(recipe, device.type),
            dist_init_required=False,
        )
    return Prepared(model=engine, recipe=recipe, device=device, optimizer=ds_optimizer,
                    scheduler=ds_scheduler, masks=masks, engine=engine)
