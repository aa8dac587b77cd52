"""A recipe in the formats users' training tools take: a DeepSpeed config, a launch command,
keyword arguments for ``transformers.TrainingArguments``, and an Accelerate config file.

Pure functions of a ``Recipe``: no printing, no files, and no import of DeepSpeed or
transformers (the exported data is plain JSON/YAML values). ``autotune export`` writes them.

Each format says what the recipe's knobs become, and where a tool has no exact equivalent the
docstring says what was approximated; knobs a format cannot express at all are listed (see
``hf_unsupported``), never dropped silently. The learning-rate schedule is the recipe's: linear
warmup from near 0 to ``lr`` over ``warmup_steps`` optimizer steps, then constant, or a linear or
cosine decay to ``FINAL_LR_FRACTION`` (10%) of ``lr`` at ``decay_steps``, held after that
(``autotune.knobs.lr_factor``).

The DeepSpeed config (``deepspeed_config``) lives in ``autotune.knobs.modes``, below training
and the memory model, because a ZeRO trial trains with it too; it is exported from here. The
``TrainingArguments`` mapping (``hf_training_arguments``, ``hf_unsupported``) lives in
``autotune.integrations.hf_args``, because a ``--trainer`` search trains with it too: what is
exported is what a Trainer trial ran.
"""

from __future__ import annotations

import shlex
import textwrap
from typing import Any

import yaml

from autotune.errors import UserError
from autotune.integrations.hf_args import check_device, hf_training_arguments, hf_unsupported
from autotune.knobs import deepspeed_config
from autotune.recipe import ZERO_MODES, Recipe

__all__ = [
    "accelerate_config",
    "accelerate_unsupported",
    "accelerate_yaml",
    "deepspeed_config",
    "hf_training_arguments",
    "hf_unsupported",
    "torchrun_command",
]


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
    pipelined = recipe.parallelism == "pipeline"
    # Pipeline stages share each batch; data-parallel workers take one each.
    per_step = recipe.batch_size * recipe.accumulation_steps * (
        1 if pipelined else recipe.workers)
    where = ("1 device" if recipe.parallelism == "single"
             else f"{recipe.workers} workers, {recipe.parallelism}"
             + (" with CPU offload" if recipe.offload else ""))
    if pipelined:
        schedule = "GPipe" if recipe.pipeline_schedule == "gpipe" else "1F1B"
        where += (
            f" ({recipe.workers} stages cut at evenly spaced transformer layers with "
            f"torch.distributed.pipelining.pipeline, {recipe.pipeline_microbatches} "
            f"micro-batches per batch, Schedule{schedule}; "
            "every rank reads the same batches; each stage's optimizer over its own "
            "parameters, tied weights' gradients summed across stages: "
            "autotune.train.pipeline.prepare_pipeline does it)")
    extras = []
    if recipe.grad_clip > 0:
        extras.append(f"gradient norm clipped at {recipe.grad_clip:g}")
    if recipe.fused_optimizer != "default":
        extras.append(f"{recipe.fused_optimizer} optimizer")
    if recipe.tf32:
        extras.append("TF32 matmuls")
    if recipe.channels_last:
        extras.append("channels_last model and inputs")
    if recipe.prune_ratio > 0:
        extras.append(
            f"structured pruning of {recipe.prune_ratio:g} of the units "
            f"(autotune.knobs.prune_structured(model, {recipe.prune_ratio:g}) "
            + ("before training" if recipe.prune_after_steps == 0 else
               f"after {recipe.prune_after_steps} steps") + ")")
    if recipe.weight_sparsity > 0:
        extras.append(f"weight_sparsity {recipe.weight_sparsity:g} (autotune.knobs."
                      "prune_by_magnitude; apply_masks after each step)")
    if recipe.distill_weight > 0:
        extras.append(
            f"distillation from a frozen teacher: loss = {1 - recipe.distill_weight:g} x task "
            f"loss + {recipe.distill_weight:g} x T^2 x KL at T={recipe.distill_temperature:g} "
            "(autotune.knobs.distillation_loss; the launcher has no such option)")
    if recipe.compile != "none":
        extras.append(f"torch.compile mode {recipe.compile}" + (
            " (DeepSpeed: engine.compile(compile_kwargs={'mode': ...}) after initialize)"
            if recipe.parallelism in ZERO_MODES else ""))
    return (f"recipe: {precision}, micro-batch {recipe.batch_size} per device, "
            f"{recipe.accumulation_steps} accumulation step"
            f"{'s' if recipe.accumulation_steps != 1 else ''}, {where}: {per_step} examples per "
            f"optimizer step; {recipe.optimizer} lr {recipe.lr:g}"
            + "".join(f"; {extra}" for extra in extras))


# -- transformers ---------------------------------------------------------------------------


_HF_COMMENTS = {
    "bf16": "bf16 autocast (mixed precision; weights stay fp32)",
    "fp16": "fp16 autocast with a dynamic loss scaler",
    "per_device_train_batch_size": "micro-batch per device",
    "gradient_accumulation_steps": "micro-batches summed before one optimizer step",
    "learning_rate": "peak learning rate",
    "weight_decay": "weight decay (HF leaves biases and norm weights undecayed)",
    "optim": "optimizer (HF has no plain Adam: adam becomes adamw_torch; _fused: one kernel "
             "for the whole update)",
    "optim_args": "SGD momentum",
    "max_grad_norm": "the recipe's grad_clip: the global gradient norm is clipped to it once per "
                     "optimizer step (0: no clipping, where HF's default clips at 1.0)",
    "tf32": "TF32 matmuls on the GPU (Ampere and newer)",
    "torch_compile": "torch.compile the model; the compile runs in the first steps, once per run",
    "torch_compile_mode": "the recipe's compile mode",
    "lr_scheduler_type": "the recipe's schedule (see lr_scheduler_kwargs)",
    "warmup_steps": "optimizer steps of linear warmup to the peak learning rate",
    "lr_scheduler_kwargs": "decay to 10% of the peak at the recipe's decay_steps, held after "
                           "(independent of max_steps)",
    "fsdp": "FSDP2 sharding of parameters, gradients and optimizer state",
    "fsdp_config": "full sharding, each transformer layer wrapped",
    "deepspeed": "DeepSpeed config: ZeRO stage, offload, optimizer",
    "use_cpu": "train on the CPU",
    "dataloader_num_workers": "DataLoader worker processes (0: load in the training process)",
    "dataloader_pin_memory": "page-locked batches for asynchronous copies to the GPU",
    "dataloader_prefetch_factor": "batches each loader worker prepares ahead",
    "dataloader_persistent_workers": "loader workers kept alive between epochs",
}


def hf_yaml(kwargs: dict[str, Any], recipe: Recipe, unsupported: list[str], source: str) -> str:
    """``hf_training_arguments``'s keyword arguments as YAML, with a comment saying what each
    setting does and the knobs it cannot express (``autotune export --format hf``)."""
    lines = [
        f"# transformers.TrainingArguments keyword arguments for the recipe in {source}:",
        f"#   {recipe.describe()}",
        "# Use: TrainingArguments(output_dir=..., max_steps=..., **yaml.safe_load(open(PATH)))",
        "# (the length of training is yours to set; the schedule does not depend on it).",
    ]
    if recipe.workers > 1:
        lines.append(f"# Launch with {recipe.workers} processes: torchrun --nproc-per-node="
                     f"{recipe.workers} YOUR_SCRIPT.py")
    for line in unsupported:
        lines += textwrap.wrap(f"Not expressed here: {line}", 96, initial_indent="# ",
                               subsequent_indent="#   ")
    comments = dict(_HF_COMMENTS)
    if "deepspeed" in kwargs:  # DeepSpeed builds the optimizer from its config, over all weights
        for key in ("optim", "optim_args", "weight_decay"):
            comments[key] = f"{key}: the DeepSpeed config's optimizer section applies"
    for key, value in kwargs.items():
        lines.append(f"# {comments.get(key, key)}")
        lines.append(yaml.safe_dump({key: value}, sort_keys=False).rstrip())
    return "\n".join(lines) + "\n"


# -- accelerate -----------------------------------------------------------------------------


def accelerate_config(recipe: Recipe, *, device_type: str = "cuda") -> dict[str, Any]:
    """The recipe as an Accelerate config file's settings (``accelerate launch
    --config_file PATH script.py``; the keys of ``accelerate config``'s file, which
    ``accelerate.commands.config.config_args.load_config_from_file`` reads).

    What a launch config can hold: ``mixed_precision`` (the recipe's precision: ``no``,
    ``bf16``, ``fp16``), ``num_processes`` (``workers``) and ``distributed_type``: ``NO`` for
    one device, ``MULTI_GPU`` (``MULTI_CPU`` on a CPU) for ``ddp``, ``FSDP`` (FSDP2, full
    sharding, each transformer layer wrapped, activation checkpointing as the recipe's
    ``checkpointing``) for ``fsdp``, ``DEEPSPEED`` for ``zero1``-``zero3`` with the plugin's
    ZeRO stage, CPU offload, accumulation and clipping; ``compile`` becomes the dynamo
    settings (inductor, the recipe's mode). The batch size, optimizer, learning rate and
    schedule are the script's (``accelerate_unsupported`` says what to set there); a
    pipeline recipe has no Accelerate training equivalent (``UserError``)."""
    check_device(device_type)
    if recipe.parallelism == "pipeline":
        raise UserError(
            "the recipe's parallelism is 'pipeline', which Accelerate's launcher does not train "
            "(its pipeline support is for inference); use --format torchrun with a script that "
            "splits the model with torch.distributed.pipelining")
    cpu = device_type == "cpu"
    kinds = {"single": "NO", "ddp": "MULTI_CPU" if cpu else "MULTI_GPU", "fsdp": "FSDP"}
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": kinds.get(recipe.parallelism, "DEEPSPEED"),
        "mixed_precision": {"fp32": "no"}.get(recipe.precision, recipe.precision),
        "num_processes": recipe.workers,
        "num_machines": 1,
        "machine_rank": 0,
        "use_cpu": cpu,
        "main_training_function": "main",
        "rdzv_backend": "static",
        "same_network": True,
        "debug": False,
    }
    if not cpu:
        config["gpu_ids"] = "all"
    if recipe.parallelism in ZERO_MODES:
        config["deepspeed_config"] = {
            "zero_stage": int(recipe.parallelism[-1]),
            "offload_optimizer_device": "cpu" if recipe.offload else "none",
            "offload_param_device": "cpu" if recipe.offload and recipe.parallelism == "zero3"
            else "none",
            "gradient_accumulation_steps": recipe.accumulation_steps,
            "gradient_clipping": recipe.grad_clip,
            "zero3_init_flag": False,
        }
    if recipe.parallelism == "fsdp":
        config["fsdp_config"] = {
            "fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": True, "fsdp_offload_params": recipe.offload,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_activation_checkpointing": recipe.checkpointing,
        }
    if recipe.compile != "none":
        config["dynamo_config"] = {"dynamo_backend": "INDUCTOR", "dynamo_mode": recipe.compile}
    return config


def accelerate_unsupported(recipe: Recipe) -> list[str]:
    """What the training script must apply itself, one line each: a launch config holds the
    environment, not the training settings (``Accelerator(gradient_accumulation_steps=...)``
    and the optimizer are the script's), plus the knobs ``hf_unsupported`` names."""
    out = [f"in your script: {_launch_summary(recipe)}"]
    if recipe.parallelism not in ZERO_MODES and recipe.accumulation_steps > 1:
        out.append(f"accumulation: Accelerator(gradient_accumulation_steps="
                   f"{recipe.accumulation_steps}) and `with accelerator.accumulate(model):` "
                   "around each micro-batch (DeepSpeed's config carries it for ZeRO)")
    if recipe.parallelism not in ZERO_MODES and recipe.grad_clip > 0:
        out.append(f"clipping: accelerator.clip_grad_norm_(model.parameters(), "
                   f"{recipe.grad_clip:g}) before each optimizer step")
    return out + [line for line in hf_unsupported(recipe) if not line.startswith("parallelism")]


def accelerate_yaml(config: dict[str, Any], recipe: Recipe, notes: list[str],
                    source: str) -> str:
    """``accelerate_config``'s settings as the YAML file ``accelerate launch --config_file``
    reads, after comment lines saying where it came from and what the script must do."""
    lines = [f"# Accelerate config for the recipe in {source}:",
             f"#   {recipe.describe()}",
             "# Use: accelerate launch --config_file THIS_FILE your_script.py"]
    for note in notes:
        lines += textwrap.wrap(note, 96, initial_indent="# ", subsequent_indent="#   ")
    return "\n".join(lines) + "\n" + yaml.safe_dump(config, sort_keys=False)
