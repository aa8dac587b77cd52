"""What a recipe asks of a device, in numbers both training and the memory model need:
which recipes a device can run, bytes per weight and of optimizer state, and the DeepSpeed
config of a ZeRO recipe (the one a trial trains with and the one ``autotune export`` writes).

Plain functions of a ``Recipe``: nothing here imports DeepSpeed.
"""

from __future__ import annotations

from typing import Any

from autotune.errors import UserError
from autotune.knobs.optim import FINAL_LR_FRACTION, implementation_kwargs
from autotune.recipe import ZERO_MODES, Recipe

MODES = ("single", "ddp", "fsdp", *ZERO_MODES, "pipeline")
"""Every value of ``Recipe.parallelism``."""

DEVICE_TYPES = ("cuda", "cpu")

_DS_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}


def unsupported_reason(recipe: Recipe, device_type: str) -> str | None:
    """Why this recipe cannot run on this kind of device (None when it can)."""
    if recipe.parallelism == "pipeline":
        reason = _pipeline_unsupported(recipe)
        if reason:
            return reason
    if recipe.parallelism in ZERO_MODES and recipe.precision == "fp16" and device_type == "cpu":
        return "DeepSpeed does not support fp16 on the CPU (use bf16 or fp32)"
    if recipe.parallelism == "zero3" and recipe.weight_sparsity > 0:
        return ("weight_sparsity is not supported with ZeRO-3 (its parameters are partitioned, "
                "so the masks cannot be re-applied)")
    if recipe.parallelism == "fsdp" and recipe.precision == "fp16":
        return "fp16 with FSDP2 needs a sharded gradient scaler, which autotune does not use"
    if recipe.parallelism == "fsdp" and recipe.fused_optimizer == "fused" \
            and recipe.optimizer == "sgd":
        return ("torch's fused SGD has no implementation for FSDP2's sharded (DTensor) "
                "parameters; use fused_optimizer foreach or off, or a fused Adam/AdamW")
    if recipe.tf32 and device_type == "cpu":
        return "TF32 is a CUDA GPU matmul mode (Ampere and newer); a CPU has none (set tf32 false)"
    if recipe.compile == "reduce-overhead" and device_type == "cpu":
        return ("compile reduce-overhead captures CUDA graphs, which a CPU does not have; use "
                "compile default or max-autotune-no-cudagraphs (or none)")
    return None


def _pipeline_unsupported(recipe: Recipe) -> str | None:
    """The knobs autotune's pipeline (``autotune.train.pipeline``) does not combine with
    (``prune_after_steps`` > 0 and ``distill_weight`` > 0 are refused by the recipe's
    rules)."""
    if recipe.precision == "fp16":
        return ("fp16 with pipeline needs one loss scaler shared by every stage, which autotune "
                "does not implement; use bf16 or fp32")
    if recipe.compile != "none":
        return "compile with pipeline is not supported (the stages run torch.export graphs)"
    if recipe.checkpointing:
        return ("checkpointing with pipeline is not supported (the stages are traced graphs, "
                "not the model's blocks); a stage holds only its own blocks' activations")
    if recipe.weight_sparsity > 0:
        return "weight_sparsity with pipeline is not supported (no masks on the stages)"
    return None


def weight_bytes(recipe: Recipe) -> int:
    """Bytes of one weight as the recipe's run holds it: DeepSpeed casts the model to bf16 or
    fp16 in those modes; everything else keeps fp32 weights (autocast computes in 16 bits)."""
    return 2 if recipe.parallelism in ZERO_MODES and recipe.precision != "fp32" else 4


def optimizer_state_per_param(recipe: Recipe) -> int:
    """Bytes of fp32 optimizer state per parameter: Adam/AdamW keep two moments, SGD with
    momentum one buffer, plain SGD none."""
    if recipe.optimizer in ("adam", "adamw"):
        return 8
    return 4 if recipe.momentum > 0 else 0


# -- DeepSpeed ------------------------------------------------------------------------------


def zero_config(recipe: Recipe, device_type: str) -> dict[str, Any]:
    """The DeepSpeed config a trial trains with: the exported config (``deepspeed_config``:
    stage, offload, batch sizes, precision) without its optimizer and schedule, which are
    autotune's own, passed to ``deepspeed.initialize`` as objects."""
    config = deepspeed_config(recipe, device_type=device_type, with_scheduler=False)
    config.pop("optimizer", None)
    config.update(
        zero_allow_untested_optimizer=True,  # a client torch optimizer (SGD, Adam, AdamW)
        zero_force_ds_cpu_optimizer=False,  # offload with torch SGD is allowed, if slower
        steps_per_print=10**9,
        wall_clock_breakdown=False,
    )
    return config


def deepspeed_config(
    recipe: Recipe, *, device_type: str = "cuda", with_scheduler: bool = True
) -> dict[str, Any]:
    """The DeepSpeed config (``ds_config.json``) that trains with a ZeRO recipe.

    DeepSpeed builds the optimizer and, with ``with_scheduler``, the learning-rate schedule from
    it, so a script needs only ``deepspeed.initialize(model=..., model_parameters=...,
    config=...)``. ``with_scheduler=False`` leaves the schedule to the caller: the
    transformers ``Trainer`` uses its own (``autotune.export.hf_training_arguments``), and a
    DeepSpeed ``scheduler`` section would have to repeat its step counts.

    ``train_batch_size`` is micro-batch x accumulation x workers, which DeepSpeed checks against
    the world size it is launched with. ``device_type="cpu"`` targets DeepSpeed's CPU
    accelerator: no pinned memory, torch's Adam instead of the JIT-compiled fused one, and fp16
    refused (DeepSpeed's CPU accelerator runs fp16 only where oneDNN does; ``autotune``'s own
    fp16 on a CPU is emulated autocast). ``gradient_clipping`` is the recipe's ``grad_clip``
    (0: none), written even at 0 because DeepSpeed's default clips at 1.0; DeepSpeed clips the
    global norm of the averaged, unscaled gradient itself.
    ``tf32`` and ``channels_last`` have no DeepSpeed key: the training script applies them
    (``autotune.export.torchrun_command``'s comment line names them). Nor has ``compile``:
    DeepSpeed 0.19's ``compile`` section configures DeepCompile (its own graph passes), not
    a ``torch.compile`` mode, so the script calls ``engine.compile(compile_kwargs={"mode":
    ...})`` after ``deepspeed.initialize``, as a trial does (the comment line says so).
    Raises ``UserError`` for a recipe that is not a ZeRO one.
    """
    _check_device(device_type)
    if recipe.parallelism not in ZERO_MODES:
        raise _not_zero(recipe)
    if recipe.precision == "fp16" and device_type == "cpu":
        raise UserError(
            "the recipe's precision is fp16, which DeepSpeed does not support on a CPU (its CPU "
            "accelerator refuses fp16 where oneDNN has no fp16 kernels). Export for a GPU "
            "(--device cuda), or change the recipe's precision to bf16 or fp32."
        )
    stage = int(recipe.parallelism[-1])
    zero: dict[str, Any] = {"stage": stage}
    if recipe.offload:
        offload = {"device": "cpu", "pin_memory": device_type == "cuda"}
        zero["offload_optimizer"] = dict(offload)
        if stage == 3:
            zero["offload_param"] = dict(offload)
    config: dict[str, Any] = {
        "train_batch_size": recipe.batch_size * recipe.accumulation_steps * recipe.workers,
        "train_micro_batch_size_per_gpu": recipe.batch_size,
        "gradient_accumulation_steps": recipe.accumulation_steps,
        "zero_optimization": zero,
        "bf16": {"enabled": recipe.precision == "bf16"},
        "fp16": _ds_fp16(recipe),
        # Always written: DeepSpeed's default (0.19) clips at 1.0, which the recipe may not.
        "gradient_clipping": recipe.grad_clip,
        "optimizer": _ds_optimizer(recipe, device_type),
    }
    if recipe.optimizer == "sgd":
        # ZeRO refuses optimizers outside its tested list (Adam, AdamW, Adagrad, ...) unless
        # told; torch's SGD works with every stage.
        config["zero_allow_untested_optimizer"] = True
    if with_scheduler:
        scheduler = _ds_scheduler(recipe)
        if scheduler is not None:
            config["scheduler"] = scheduler
    return config


def _check_device(device_type: str) -> None:
    if device_type not in DEVICE_TYPES:
        raise UserError(f"device type must be one of {', '.join(DEVICE_TYPES)}; got "
                        f"{device_type!r}")


def _not_zero(recipe: Recipe) -> UserError:
    return UserError(
        f"the recipe's parallelism is {recipe.parallelism!r}, so there is no DeepSpeed config: "
        f"DeepSpeed runs only the ZeRO modes ({', '.join(ZERO_MODES)}). Export this recipe with "
        "--format torchrun (the launch command) or --format hf (transformers TrainingArguments)."
    )


def _round(x: float) -> float:
    """``0.1 * lr`` without float noise in the file (``1e-05``, not ``1.0000000000000002e-05``)."""
    return float(f"{x:.12g}")


def _ds_fp16(recipe: Recipe) -> dict[str, Any]:
    """fp16 with dynamic loss scaling (``loss_scale: 0``), DeepSpeed's documented defaults."""
    if recipe.precision != "fp16":
        return {"enabled": False}
    return {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
            "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}


def _ds_optimizer(recipe: Recipe, device_type: str) -> dict[str, Any]:
    """The recipe's optimizer as DeepSpeed names it.

    DeepSpeed 0.19 turns a config ``Adam`` into AdamW (decoupled weight decay) unless
    ``adam_w_mode`` is false, so both Adam types say it explicitly. With offload the step runs
    on the CPU in DeepSpeed's ``DeepSpeedCPUAdam`` (``torch_adam: false``; a C++ op compiled on
    first use); SGD has no DeepSpeed CPU version and runs as torch's SGD on the CPU copy.

    ``fused_optimizer``: where DeepSpeed builds a torch optimizer (SGD; Adam with
    ``torch_adam``) it passes the remaining params to its constructor, so ``foreach``/``fused``
    go there as torch takes them. DeepSpeed's own Adams (fused on a GPU, ``DeepSpeedCPUAdam``
    with offload) have no such choice: they are fused kernels already.
    """
    params: dict[str, Any] = {"lr": recipe.lr, "weight_decay": recipe.weight_decay}
    if recipe.optimizer == "sgd":
        params["momentum"] = recipe.momentum
    else:
        params["adam_w_mode"] = recipe.optimizer == "adamw"
        # torch_adam: torch.optim.Adam/AdamW. False selects DeepSpeedCPUAdam with offload and
        # the fused (JIT-compiled) Adam on a GPU; on DeepSpeed's CPU accelerator torch's is the
        # same update without a compile.
        params["torch_adam"] = device_type == "cpu" and not recipe.offload
    if recipe.optimizer == "sgd" or params["torch_adam"]:
        params.update(implementation_kwargs(recipe.fused_optimizer))
    return {"type": _DS_OPTIMIZERS[recipe.optimizer], "params": params}


def _ds_scheduler(recipe: Recipe) -> dict[str, Any] | None:
    """The recipe's schedule as a DeepSpeed scheduler (``None``: constant, no warmup).

    - constant: ``WarmupLR``, linear warmup from 0 to ``lr``.
    - linear: ``WarmupDecayLR`` decays from ``lr`` towards ``warmup_min_lr`` at
      ``total_num_steps`` and holds it, so ``warmup_min_lr`` is 10% of ``lr`` and
      ``total_num_steps`` is ``decay_steps``: the decay is the recipe's. The price: its warmup
      starts at 10% of ``lr`` instead of near 0.
    - cosine: ``WarmupCosineLR`` (ratios of ``lr``) with ``cos_min_ratio`` 0.1 and
      ``total_num_steps`` = ``decay_steps``: the recipe's curve, held at 10% after.

    DeepSpeed's warmup (``warmup_type: linear``) reaches ``lr`` about two optimizer steps later
    than the recipe's, and its first optimizer step runs at the warmup's start value (0 for
    WarmupLR and WarmupCosineLR). DeepSpeed 0.19.6+ rejects ``warmup_num_steps: 0``, so a
    recipe without warmup gets 1 (DeepSpeed uses at least 2), at the full rate where the
    scheduler allows it (``warmup_min_ratio: 1.0`` for cosine).
    """
    warmup = recipe.warmup_steps
    if recipe.schedule == "constant":
        if warmup == 0:
            return None
        return {"type": "WarmupLR", "params": {
            "warmup_min_lr": 0.0, "warmup_max_lr": recipe.lr, "warmup_num_steps": warmup,
            "warmup_type": "linear"}}
    if recipe.schedule == "linear":
        return {"type": "WarmupDecayLR", "params": {
            "total_num_steps": recipe.decay_steps,
            "warmup_min_lr": _round(FINAL_LR_FRACTION * recipe.lr), "warmup_max_lr": recipe.lr,
            "warmup_num_steps": max(1, warmup), "warmup_type": "linear"}}
    return {"type": "WarmupCosineLR", "params": {
        "total_num_steps": recipe.decay_steps, "warmup_num_steps": max(1, warmup),
        "warmup_min_ratio": 0.0 if warmup else 1.0, "cos_min_ratio": FINAL_LR_FRACTION,
        "warmup_type": "linear"}}
