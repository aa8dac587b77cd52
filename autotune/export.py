"""A recipe in the formats users' training tools take: a DeepSpeed config, a launch command,
and keyword arguments for ``transformers.TrainingArguments``.

Pure functions of a ``Recipe``: no printing, no files, and no import of DeepSpeed or
transformers (the exported data is plain JSON/YAML values). ``autotune export`` writes them.

Each format says what the recipe's knobs become, and where a tool has no exact equivalent the
docstring says what was approximated; knobs a format cannot express at all are listed (see
``hf_unsupported``), never dropped silently. The learning-rate schedule is the recipe's: linear
warmup from near 0 to ``lr`` over ``warmup_steps`` optimizer steps, then constant, or a linear or
cosine decay to ``FINAL_LR_FRACTION`` (10%) of ``lr`` at ``decay_steps``, held after that
(``autotune.train.knobs.lr_factor``).
"""

from __future__ import annotations

import shlex
from typing import Any

from autotune.errors import UserError
from autotune.recipe import ZERO_MODES, Recipe

FINAL_LR_FRACTION = 0.1
"""A decaying schedule ends at this fraction of ``lr`` (as ``autotune.train.knobs``)."""

DEVICE_TYPES = ("cuda", "cpu")

_DS_OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}


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


# -- DeepSpeed ------------------------------------------------------------------------------


def deepspeed_config(
    recipe: Recipe, *, device_type: str = "cuda", with_scheduler: bool = True
) -> dict[str, Any]:
    """The DeepSpeed config (``ds_config.json``) that trains with a ZeRO recipe.

    DeepSpeed builds the optimizer and, with ``with_scheduler``, the learning-rate schedule from
    it, so a script needs only ``deepspeed.initialize(model=..., model_parameters=...,
    config=...)``. ``with_scheduler=False`` leaves the schedule to the caller: the
    transformers ``Trainer`` uses its own (``hf_training_arguments``), and a DeepSpeed
    ``scheduler`` section would have to repeat its step counts.

    ``train_batch_size`` is micro-batch x accumulation x workers, which DeepSpeed checks against
    the world size it is launched with. ``device_type="cpu"`` targets DeepSpeed's CPU
    accelerator: no pinned memory, torch's Adam instead of the JIT-compiled fused one, and fp16
    refused (DeepSpeed's CPU accelerator runs fp16 only where oneDNN does; ``autotune``'s own
    fp16 on a CPU is emulated autocast). Gradient clipping is not set: the recipe has none.
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


# -- launch command -------------------------------------------------------------------------


def torchrun_command(
    recipe: Recipe, *, script: str = "train.py", nnodes: int = 1,
    deepspeed_config_path: str = "ds_config.json",
) -> str:
    """The command that launches ``script`` with the recipe's parallelism, after a comment
    line saying what the script must apply (precision, micro-batch, accumulation).

    ``single`` is ``python script``. Every multi-worker mode, ZeRO included, uses ``torchrun``
    with ``workers`` processes in all (``workers / nnodes`` per node): one launcher with the same
    multi-node flags for every mode, and DeepSpeed reads torchrun's environment (``RANK``,
    ``LOCAL_RANK``, ``WORLD_SIZE``) in ``deepspeed.init_distributed``, where the ``deepspeed``
    launcher would need a hostfile for several nodes. A ZeRO script gets
    ``--deepspeed_config PATH``, the argument ``deepspeed.add_config_arguments`` defines. One
    node uses ``--standalone`` (torchrun picks a free port); several use a c10d rendezvous at
    ``$MASTER_ADDR:29500``, and the same command runs on every node. The result parses with
    ``shlex.split(text, comments=True)``.
    """
    if nnodes < 1:
        raise UserError(f"nnodes must be >= 1; got {nnodes}")
    if recipe.parallelism == "single" and nnodes != 1:
        raise UserError(
            f"the recipe's parallelism is 'single' (one device), so it runs on one node; got "
            f"nnodes {nnodes}. Use nnodes 1, or a recipe with ddp, fsdp or a zero mode."
        )
    if recipe.workers % nnodes:
        raise UserError(
            f"the recipe's {recipe.workers} workers do not split evenly over {nnodes} nodes: "
            f"choose nnodes dividing {recipe.workers}."
        )
    lines = [f"# {_launch_summary(recipe)}"]
    if recipe.parallelism == "single":
        lines.append(shlex.join(["python", script]))
        return "\n".join(lines) + "\n"
    argv = ["torchrun"]
    if nnodes == 1:
        argv += ["--standalone", f"--nproc-per-node={recipe.workers}"]
    else:
        lines.append(f"# run this same command on each of the {nnodes} nodes, with MASTER_ADDR "
                     "set to the first node's address")
        argv += [f"--nnodes={nnodes}", f"--nproc-per-node={recipe.workers // nnodes}",
                 "--rdzv-backend=c10d", "--rdzv-endpoint=$MASTER_ADDR:29500",
                 "--rdzv-id=autotune"]
    argv.append(script)
    if recipe.parallelism in ZERO_MODES:
        argv += ["--deepspeed_config", deepspeed_config_path]
    # shlex.join would quote $MASTER_ADDR; the shell must expand it.
    lines.append(" ".join(a if a.startswith("--rdzv-endpoint=$") else shlex.quote(a)
                          for a in argv))
    return "\n".join(lines) + "\n"


def _launch_summary(recipe: Recipe) -> str:
    precision = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast with a loss "
                 "scaler"}[recipe.precision]
    per_step = recipe.batch_size * recipe.accumulation_steps * recipe.workers
    where = ("1 device" if recipe.parallelism == "single"
             else f"{recipe.workers} workers, {recipe.parallelism}"
             + (" with CPU offload" if recipe.offload else ""))
    return (f"recipe: {precision}, micro-batch {recipe.batch_size} per device, "
            f"{recipe.accumulation_steps} accumulation step"
            f"{'s' if recipe.accumulation_steps != 1 else ''}, {where}: {per_step} examples per "
            f"optimizer step; {recipe.optimizer} lr {recipe.lr:g}")


# -- transformers ---------------------------------------------------------------------------


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
    ``max_grad_norm`` is 0: the recipe does not clip gradients (HF clips at 1.0 by default).

    Parallelism: ``ddp`` needs nothing but the launch (``torchrun_command``); ``fsdp`` is
    ``fsdp=True`` with FSDP2 full sharding of each transformer layer; a ZeRO recipe needs
    ``deepspeed_config_path``, a config from ``deepspeed_config(recipe,
    with_scheduler=False)`` whose optimizer DeepSpeed builds while the Trainer keeps the
    schedule. ``device_type="cpu"`` adds ``use_cpu`` (which bf16 on a CPU requires).
    Knobs with no TrainingArguments field: ``hf_unsupported``.
    """
    _check_device(device_type)
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
        "optim": "sgd" if recipe.optimizer == "sgd" else "adamw_torch",
        "max_grad_norm": 0.0,
        **_hf_schedule(recipe),
    }
    if recipe.optimizer == "sgd":
        kwargs["optim_args"] = f"momentum={recipe.momentum}"
    if recipe.checkpointing:
        kwargs["gradient_checkpointing"] = True
    if recipe.parallelism == "fsdp":
        kwargs["fsdp"] = True
        kwargs["fsdp_config"] = {"version": 2, "reshard_after_forward": True,
                                 "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}
    if zero:
        kwargs["deepspeed"] = deepspeed_config_path
    if device_type == "cpu":
        kwargs["use_cpu"] = True
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

    SGD momentum is supported (``optim_args``); pruning has no TrainingArguments field; plain
    Adam (L2 weight decay) has no HF optimizer name outside DeepSpeed.
    """
    out: list[str] = []
    if recipe.prune_ratio > 0:
        out.append(
            f"prune_ratio {recipe.prune_ratio:g}: TrainingArguments have no pruning; zero the "
            "smallest-magnitude weights yourself (autotune.train.knobs.prune_by_magnitude) "
            "before training and after each optimizer step (a TrainerCallback's on_step_end)."
        )
    if recipe.optimizer == "adam" and recipe.weight_decay > 0 \
            and recipe.parallelism not in ZERO_MODES:
        out.append(
            f"optimizer adam with weight_decay {recipe.weight_decay:g}: HF has no plain Adam "
            "(L2 weight decay), so the arguments use adamw_torch (decoupled decay); for the "
            "recipe's exact optimizer pass Trainer(optimizer_cls_and_kwargs=(torch.optim.Adam, "
            f"{{'lr': {recipe.lr:g}, 'weight_decay': {recipe.weight_decay:g}}}))."
        )
    return out
