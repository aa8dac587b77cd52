"""A recipe in the formats users' training tools take: a DeepSpeed config, a launch command,
and keyword arguments for ``transformers.TrainingArguments``.

Pure functions of a ``Recipe``: no printing, no files, and no import of DeepSpeed or
transformers (the exported data is plain JSON/YAML values). ``autotune export`` writes them.

Each format says what the recipe's knobs become, and where a tool has no exact equivalent the
docstring says what was approximated; knobs a format cannot express at all are listed (see
``hf_unsupported``), never dropped silently. The learning-rate schedule is the recipe's: linear
warmup from near 0 to ``lr`` over ``warmup_steps`` optimizer steps, then constant, or a linear or
cosine decay to ``FINAL_LR_FRACTION`` (10%) of ``lr`` at ``decay_steps``, held after that
(``autotune.knobs.lr_factor``).

The DeepSpeed config (``deepspeed_config``) lives in ``autotune.knobs.modes``, below training
and the memory model, because a ZeRO trial trains with it too; it is exported from here.
"""

from __future__ import annotations

import shlex
import textwrap
from typing import Any

import yaml

from autotune.errors import UserError
from autotune.knobs import FINAL_LR_FRACTION, deepspeed_config
from autotune.knobs.modes import DEVICE_TYPES
from autotune.recipe import ZERO_MODES, Recipe

__all__ = [
    "deepspeed_config",
    "hf_training_arguments",
    "hf_unsupported",
    "torchrun_command",
]


def _check_device(device_type: str) -> None:
    if device_type not in DEVICE_TYPES:
        raise UserError(f"device type must be one of {', '.join(DEVICE_TYPES)}; got "
                        f"{device_type!r}")


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
    _check_device(device_type)
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
