"""Recipe -> ``transformers.TrainingArguments``: the one mapping that ``autotune export --format
hf`` writes out and that a ``--trainer`` search trains with (``autotune.integrations.hf_trainer``),
so that an exported recipe is exactly what a Trainer trial ran.

Pure functions of a ``Recipe`` returning plain keyword arguments: no import of transformers
here (the exporter must stay light), no printing, no files. ``hf_unsupported`` lists the knobs
the arguments cannot express, each with what to do instead, so none is dropped silently.
"""

from __future__ import annotations

from typing import Any

from autotune.errors import UserError
from autotune.knobs import FINAL_LR_FRACTION
from autotune.knobs.modes import DEVICE_TYPES
from autotune.recipe import ZERO_MODES, Recipe

__all__ = ["check_device", "hf_training_arguments", "hf_unsupported"]


def check_device(device_type: str) -> None:
    """``UserError`` unless ``device_type`` is one an export can target (``cuda``, ``cpu``)."""
    if device_type not in DEVICE_TYPES:
        raise UserError(f"device type must be one of {', '.join(DEVICE_TYPES)}; got "
                        f"{device_type!r}")


def hf_training_arguments(
    recipe: Recipe, *, deepspeed_config_path: str | None = None, device_type: str = "cuda"
) -> dict[str, Any]:
    """Keyword arguments for ``transformers.TrainingArguments`` (transformers 5.x) that train
    with the recipe: ``TrainingArguments(output_dir=..., max_steps=..., **kwargs)``.

    The length of training (``max_steps`` or ``num_train_epochs``) is left to the user: the
    recipe's schedule does not depend on it. The schedule is ``warmup_stable_decay`` with no
    stable phase, ``num_decay_steps`` = ``decay_steps - warmup_steps`` and ``min_lr_ratio``
    0.1: the recipe's linear or cosine decay to 10% of ``lr`` at ``decay_steps``, held after
    (HF's ``linear``/``cosine`` would decay to 0 at ``max_steps`` instead). Its warmup starts at
    10% of ``lr`` rather than near 0. A constant schedule is ``constant_with_warmup``.

    Optimizer: ``adamw`` is ``adamw_torch``; ``sgd`` is ``sgd`` with the momentum in
    ``optim_args``; HF has no plain Adam, so ``adam`` becomes ``adamw_torch`` (exact when
    ``weight_decay`` is 0; ``hf_unsupported`` says so otherwise). HF's Trainer leaves biases
    and normalisation weights out of weight decay; the recipe decays every weight.
    ``max_grad_norm`` is the recipe's ``grad_clip`` (0: no clipping; HF clips at 1.0 by
    default). ``fused_optimizer`` ``fused`` is ``adamw_torch_fused`` for the Adam family; HF
    has no choice for ``foreach`` or for SGD's implementation (``hf_unsupported``). ``tf32``
    is ``tf32=True``, which HF accepts only on a GPU with TF32 (a CPU export of it raises
    ``UserError``, as the recipe cannot run there); ``False`` leaves torch's defaults, so it
    sets nothing. ``channels_last`` has no field (``hf_unsupported``). ``compile`` is
    ``torch_compile=True`` with ``torch_compile_mode`` (``reduce-overhead`` refused for a CPU,
    like ``tf32``); ``none`` sets nothing.

    Parallelism: ``ddp`` needs nothing but the launch (``torchrun_command``); ``fsdp`` is
    ``fsdp=True`` with FSDP2 full sharding of each transformer layer; a ZeRO recipe needs
    ``deepspeed_config_path``, a config from ``deepspeed_config(recipe,
    with_scheduler=False)`` whose optimizer DeepSpeed builds while the Trainer keeps the
    schedule. ``device_type="cpu"`` adds ``use_cpu`` (which bf16 on a CPU requires).
    Knobs with no TrainingArguments field: ``hf_unsupported``.
    """
    check_device(device_type)
    if recipe.tf32 and device_type == "cpu":
        raise UserError(
            "the recipe has tf32 true, a CUDA GPU matmul mode that a CPU does not have (and "
            "TrainingArguments(tf32=True) refuses without a GPU). Export for a GPU "
            "(--device cuda), or set tf32 to false in the recipe."
        )
    if recipe.compile == "reduce-overhead" and device_type == "cpu":
        raise UserError(
            "the recipe has compile reduce-overhead, which captures CUDA graphs, and a CPU has "
            "none. Export for a GPU (--device cuda), or set compile to default in the recipe."
        )
    zero = recipe.parallelism in ZERO_MODES
    if zero and not deepspeed_config_path:
        raise UserError(
            f"the recipe's parallelism is {recipe.parallelism!r}: TrainingArguments run ZeRO "
            "through DeepSpeed and need the path of a DeepSpeed config (deepspeed_config_path; "
            "`autotune export RECIPE --format hf` writes one beside the arguments)."
        )
    if deepspeed_config_path and not zero:
        raise UserError(
            f"the recipe's parallelism is {recipe.parallelism!r}, not a ZeRO mode, so it takes "
            "no DeepSpeed config; leave deepspeed_config_path out."
        )
    kwargs: dict[str, Any] = {
        "bf16": recipe.precision == "bf16",
        "fp16": recipe.precision == "fp16",
        "per_device_train_batch_size": recipe.batch_size,
        "gradient_accumulation_steps": recipe.accumulation_steps,
        "learning_rate": recipe.lr,
        "weight_decay": recipe.weight_decay,
        "optim": _hf_optim(recipe),
        "max_grad_norm": recipe.grad_clip,
        **_hf_schedule(recipe),
    }
    if recipe.tf32:
        kwargs["tf32"] = True
    if recipe.compile != "none":
        kwargs["torch_compile"] = True
        kwargs["torch_compile_mode"] = recipe.compile
    if recipe.optimizer == "sgd":
        kwargs["optim_args"] = f"momentum={recipe.momentum}"
    if recipe.checkpointing:
        kwargs["gradient_checkpointing"] = True
    kwargs.update(_hf_dataloader(recipe))
    if recipe.parallelism == "fsdp":
        kwargs["fsdp"] = True
        kwargs["fsdp_config"] = {"version": 2, "reshard_after_forward": True,
                                 "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}
    if zero:
        kwargs["deepspeed"] = deepspeed_config_path
    if device_type == "cpu":
        kwargs["use_cpu"] = True
    return kwargs


def _hf_optim(recipe: Recipe) -> str:
    """HF's optimizer name: ``sgd``; ``adamw_torch``, or ``adamw_torch_fused`` (torch's AdamW
    with ``fused=True``) for a fused recipe."""
    if recipe.optimizer == "sgd":
        return "sgd"
    return "adamw_torch_fused" if recipe.fused_optimizer == "fused" else "adamw_torch"


def _hf_dataloader(recipe: Recipe) -> dict[str, Any]:
    """The DataLoader knobs as TrainingArguments fields (the Trainer builds its loaders with
    them, as a trial does for a ``Dataset`` task); HF pins memory by default, the recipe only
    when it says so."""
    kwargs: dict[str, Any] = {"dataloader_num_workers": recipe.dataloader_workers,
                              "dataloader_pin_memory": recipe.pin_memory}
    if recipe.dataloader_workers > 0:
        kwargs["dataloader_prefetch_factor"] = recipe.prefetch_factor
        kwargs["dataloader_persistent_workers"] = recipe.persistent_workers
    return kwargs


def _hf_schedule(recipe: Recipe) -> dict[str, Any]:
    if recipe.schedule == "constant":
        return {"lr_scheduler_type": "constant_with_warmup", "warmup_steps": recipe.warmup_steps}
    return {
        "lr_scheduler_type": "warmup_stable_decay",
        "warmup_steps": recipe.warmup_steps,
        "lr_scheduler_kwargs": {
            "num_stable_steps": 0,
            "num_decay_steps": max(0, recipe.decay_steps - recipe.warmup_steps),
            "decay_type": recipe.schedule,
            "min_lr_ratio": FINAL_LR_FRACTION,
            "warmup_type": "linear",
        },
    }


def hf_unsupported(recipe: Recipe) -> list[str]:
    """The recipe's knobs that ``hf_training_arguments`` cannot express, one line each with
    what to do instead; empty when the arguments reproduce the whole recipe.

    SGD momentum is supported (``optim_args``); structured pruning, weight sparsity and
    channels-last have no
    TrainingArguments field; plain Adam (L2 weight decay) has no HF optimizer name outside
    DeepSpeed; HF names no ``foreach`` implementation, nor a fused SGD (a ZeRO recipe's
    DeepSpeed config carries both).
    """
    out: list[str] = []
    if recipe.parallelism == "pipeline":
        out.append(
            f"parallelism pipeline: TrainingArguments have no pipeline parallelism (under "
            f"torchrun the Trainer would run {recipe.workers} data-parallel copies instead); "
            "use --format torchrun with a script that splits the model with "
            "torch.distributed.pipelining (autotune.train.pipeline.prepare_pipeline)."
        )
    if recipe.prune_ratio > 0:
        when = ("before building the Trainer" if recipe.prune_after_steps == 0 else
                f"after {recipe.prune_after_steps} optimizer steps (a TrainerCallback's "
                "on_step_end; the Trainer's optimizer must then be rebuilt around the smaller "
                "model, which the Trainer does not do: prefer prune_after_steps 0)")
        out.append(
            f"prune_ratio {recipe.prune_ratio:g}: TrainingArguments have no structured "
            f"pruning; remove the units yourself {when} with "
            f"autotune.knobs.prune_structured(model, {recipe.prune_ratio:g})."
        )
    if recipe.weight_sparsity > 0:
        out.append(
            f"weight_sparsity {recipe.weight_sparsity:g}: TrainingArguments have no weight "
            "masks; zero the smallest-magnitude weights yourself "
            "(autotune.knobs.prune_by_magnitude) before training and re-apply the masks after "
            "each optimizer step (a TrainerCallback's on_step_end, autotune.knobs.apply_masks)."
        )
    if recipe.optimizer == "adam" and recipe.weight_decay > 0 \
            and recipe.parallelism not in ZERO_MODES:
        out.append(
            f"optimizer adam with weight_decay {recipe.weight_decay:g}: HF has no plain Adam "
            "(L2 weight decay), so the arguments use adamw_torch (decoupled decay); for the "
            "recipe's exact optimizer pass Trainer(optimizer_cls_and_kwargs=(torch.optim.Adam, "
            f"{{'lr': {recipe.lr:g}, 'weight_decay': {recipe.weight_decay:g}}}))."
        )
    if recipe.channels_last:
        out.append(
            "channels_last: TrainingArguments have no memory-format option; before building "
            "the Trainer call model.to(memory_format=torch.channels_last) (convolution "
            "weights), and in your collator x.contiguous(memory_format=torch.channels_last) "
            "for 4-D image inputs."
        )
    if recipe.distill_weight > 0:
        out.append(
            f"distill_weight {recipe.distill_weight:g}: TrainingArguments (and DeepSpeed's "
            "config) have no knowledge distillation; override Trainer.compute_loss to return "
            "autotune.knobs.distillation_loss(outputs_fn, teacher, recipe)(model, inputs), "
            f"with the trained teacher frozen (teacher.eval().requires_grad_(False)) on the "
            f"model's device: (1 - w) x task loss + w x T^2 x KL at T="
            f"{recipe.distill_temperature:g}, one teacher forward pass per micro-batch."
        )
    impl = recipe.fused_optimizer
    if recipe.parallelism not in ZERO_MODES and (
            impl == "foreach" or (impl == "fused" and recipe.optimizer == "sgd")):
        cls = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[recipe.optimizer]
        out.append(
            f"fused_optimizer {impl}: HF has no optim name for {recipe.optimizer} with "
            f"{impl}=True (on a GPU torch's default is foreach anyway); for the exact "
            f"implementation pass Trainer(optimizer_cls_and_kwargs=(torch.optim.{cls}, "
            f"{{'lr': {recipe.lr:g}, '{impl}': True}}))."
        )
    return out
