"""A default search space for any task: built from its baseline recipe and the device.

A search uses it when no ``--space`` is given and no space ships for the task. It is produced
as commented YAML text (the format of ``search_spaces/*.yaml``, docs/spaces.md), so a user can
save it, edit it and pass it back with ``--space``, and so it goes through the same validation
as a file. Every range and choice is placed around the baseline's own values, and the baseline
always lies in the space (a search always measures it).

What it searches, around a baseline with batch ``B`` and learning rate ``LR``:

- precision: fp32, plus bf16 where the device computes it fast, plus fp16 on CUDA;
- batch_size: ``B/2, B, 2B, 4B`` (the baseline's batch times powers of two);
- the learning rate on a log scale over ``LR / 4 .. LR x 4`` for the baseline's optimizer
  family; the other family's range is converted by ``SGD_LR_PER_ADAM_LR`` and wider
  (``/10 .. x10``), since that conversion is a rough rule;
- warmup_steps ``0, 50, 100, 200``, schedule constant/linear/cosine, optimizer adamw/adam/sgd
  (with ``lr@sgd`` and momentum only for SGD), accumulation_steps ``1, 2, 4``;
- for a task whose data is a ``Dataset``, the DataLoader knobs: ``dataloader_workers`` 0, 1,
  2, 4 up to the machine's cores, ``prefetch_factor`` 2 or 4 and ``persistent_workers`` with
  workers, ``pin_memory`` on CUDA (it does nothing without a GPU);
- grad_clip ``0.0, 1.0`` and fused_optimizer ``default, fused``, plus tf32 ``false, true`` on
  CUDA (a CPU has no TF32: those recipes would only be infeasible there);
- compile ``none, default`` on CUDA only: on a CPU, compiling costs more than a trial's time
  limit can win back (docs/benchmarks.md, "torch.compile");
- for a task with a distillation teacher (``Task.teacher``), ``distill_weight`` ``0.0, 0.5``
  and, when distilling, ``distill_temperature`` ``2.0, 4.0`` (a task without one never gets
  them: every such recipe would be an error);
- parallelism fixed at the baseline's (single: one device). ``pipeline`` is left out on every
  device too: it pays only for a model too big for one device (each stage holds a share of
  its gradients and optimizer state), which a default space cannot know, and on a CPU its
  stages share the same cores, so it only adds the pipeline's bubbles and transfers.

Pure: no torch, Ray or Optuna; the caller passes what it knows of the device.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable

from autotune.recipe import Recipe
from autotune.space import SearchSpace, parse_space
from autotune.warm_start import BATCH_FACTOR, WARMUP_STEPS

LR_FACTOR = 4.0
"""The baseline optimizer's learning rate is searched over ``[lr / LR_FACTOR, lr x LR_FACTOR]``
(log scale): wide enough to hold the warm start's ``x sqrt2`` (Adam) or ``x2`` (SGD) and the
usual tuning steps, narrow enough that a short search samples it densely."""

OTHER_FAMILY_FACTOR = 10.0
"""The other optimizer family's range is ``[centre / 10, centre x 10]``, wider than
``LR_FACTOR`` because its centre comes from the rough ``SGD_LR_PER_ADAM_LR`` conversion."""

SGD_LR_PER_ADAM_LR = 100.0
"""SGD with momentum wants about 100 times the learning rate of Adam: Adam's step is about
``lr`` per weight whatever the gradient's size, SGD's is ``lr x gradient``; the usual defaults
differ so (Adam 1e-3, Kingma & Ba 2015; SGD 0.1 with momentum 0.9, He et al. 2016)."""

COMMENT_WIDTH = 96
"""Comment lines of the generated YAML stay within this width (the repository's 100)."""

ACCUMULATION_STEPS = (1, 2, 4)
MOMENTA = (0.8, 0.9, 0.95)
SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "adam", "sgd")
LEFT_OUT = ("prune_ratio", "prune_after_steps", "weight_sparsity", "checkpointing",
            "weight_decay", "decay_steps", "workers", "offload", "channels_last")
"""Knobs the default space does not search: they keep the baseline's value. Structured pruning
(``prune_ratio``, ``prune_after_steps``) trades accuracy per step for cheaper steps in a
task-specific way, and a user's model may have no unit it can remove (the space cannot see the
model, and a knob that acts on nothing would only spend trials); ``weight_sparsity`` is a
regulariser that never makes a step faster; the rest rarely decide time-to-target on one
device; channels_last acts only on convolutional models, which the space cannot see either;
search_spaces/bert.yaml and mnist.yaml show how to add them."""

GRAD_CLIPS = (0.0, 1.0)
"""No clipping, and the usual global-norm clip of 1.0 (HF's and DeepSpeed's default)."""


DISTILL_WEIGHTS = (0.0, 0.5)
"""No distillation, and an even mix of the task loss and the teacher's soft targets."""
DISTILL_TEMPERATURES = (2.0, 4.0)
"""Softening temperatures of the distillation term: Hinton et al.'s usual range."""

LOADER_WORKERS = (0, 1, 2, 4)
"""DataLoader worker counts a default space may try, those above the machine's cores left out
(a worker beyond them competes with training for a core)."""
PREFETCH_FACTORS = (2, 4)


def default_space_yaml(baseline: Recipe, device_type: str, *, bf16_fast: bool, source: str,
                       dataset: bool = False, cpus: int = 1, teacher: bool = False) -> str:
    """The text of the default search space for a task whose baseline is ``baseline``, run on
    ``device_type`` (``cuda``/``cpu``). ``bf16_fast``: on CUDA pass
    ``torch.cuda.is_bf16_supported()``, on a CPU ``autotune.hardware.bf16_is_fast("cpu")``.
    ``source`` is the task as given to ``--model`` (named in the header's command).
    ``dataset``: the task's data is a ``Dataset`` (so the DataLoader knobs act); ``cpus``: the
    cores of the machine the trials run on (``os.cpu_count()``), the most loader workers.
    ``teacher``: the task has a distillation teacher (so the distillation knobs can act).

    Commented YAML: a header saying where it came from and how to use an edited copy, and a
    comment on every knob saying its effect and why its values were chosen."""
    device = device_type.split(":", 1)[0]
    adam_family = baseline.optimizer in ("adam", "adamw")
    if adam_family:
        adam_lr = (baseline.lr / LR_FACTOR, baseline.lr * LR_FACTOR)
        sgd_centre = baseline.lr * SGD_LR_PER_ADAM_LR
        sgd_lr = (sgd_centre / OTHER_FAMILY_FACTOR, sgd_centre * OTHER_FAMILY_FACTOR)
    else:
        sgd_lr = (baseline.lr / LR_FACTOR, baseline.lr * LR_FACTOR)
        adam_centre = baseline.lr / SGD_LR_PER_ADAM_LR
        adam_lr = (adam_centre / OTHER_FAMILY_FACTOR, adam_centre * OTHER_FAMILY_FACTOR)
    adam_note = (
        f"/{LR_FACTOR:g} .. x{LR_FACTOR:g} around the baseline's {_num(baseline.lr)}"
        if adam_family
        else f"/{OTHER_FAMILY_FACTOR:g} .. x{OTHER_FAMILY_FACTOR:g} around the baseline's SGD lr / "
        f"{SGD_LR_PER_ADAM_LR:g} (Adam wants about 1/100 of SGD's; wider, since that is rough)"
    )
    sgd_note = (
        f"/{LR_FACTOR:g} .. x{LR_FACTOR:g} around the baseline's {_num(baseline.lr)}"
        if not adam_family
        else f"/{OTHER_FAMILY_FACTOR:g} .. x{OTHER_FAMILY_FACTOR:g} around the baseline's lr x "
        f"{SGD_LR_PER_ADAM_LR:g} (SGD wants about 100 times Adam's; wider, since that is rough)"
    )
    fast = "fast" if bf16_fast else "not fast"
    header = (
        f"Default search space for `{source}`, generated from its baseline recipe for this "
        f"device ({device}, bf16 {fast}). A search uses it when no --space is given and no space "
        "ships for the task. To change it, save this text to a file, edit it, and run:"
    )
    about = (
        f"Baseline: {baseline.describe()}. Every value below is placed around it, and the "
        "baseline itself always lies in this space (every search measures it first). "
        "Format (docs/spaces.md): `choices: [...]`, a range `low:`/`high:` (both inclusive; "
        "`log: true` samples on a log scale) or one fixed `value:`; `when:` samples a knob "
        "only when an earlier knob has one of the given values; `lr@sgd` is lr's own range "
        f"for SGD. Knobs left out keep the baseline's value: {', '.join(LEFT_OUT)}."
    )
    knobs = [
        (
            "precision",
            "Compute precision: bf16/fp16 autocast run matmuls in 16 bits (fp16 adds a loss "
            "scaler). Only what this device computes natively: bf16 where it is fast, fp16 on "
            "a CUDA GPU; an emulated 16-bit format would be slower than fp32.",
            [f"choices: {_list(_precisions(baseline, device, bf16_fast=bf16_fast))}"],
        ),
        (
            "batch_size",
            "Micro-batch per device: larger batches use the hardware better but take fewer "
            f"optimizer steps per epoch. The baseline's {baseline.batch_size} times 1/2, 1, 2, "
            "4 (the half only if it is whole).",
            [f"choices: {_list(_batch_sizes(baseline.batch_size))}"],
        ),
        (
            "accumulation_steps",
            "Micro-batches summed per optimizer step: effective batch = batch_size x "
            "accumulation_steps, at the memory of one micro-batch.",
            [f"choices: {_list(_with(ACCUMULATION_STEPS, baseline.accumulation_steps))}"],
        ),
        (
            "warmup_steps",
            "Optimizer steps of linear learning-rate warmup from near 0 to lr: lets a higher "
            f"lr start safely ({WARMUP_STEPS} is the warm start's; 0 is none).",
            [f"choices: {_list(_warmups(baseline.warmup_steps))}"],
        ),
        (
            "schedule",
            "After warmup: constant, or linear/cosine decay to 10% of lr at decay_steps "
            f"({baseline.decay_steps} optimizer steps, the baseline's).",
            [f"choices: {_list(_with(SCHEDULES, baseline.schedule))}"],
        ),
        (
            "optimizer",
            "AdamW (decoupled weight decay), Adam (L2 weight decay), or SGD with momentum.",
            [f"choices: {_list(_with(OPTIMIZERS, baseline.optimizer))}"],
        ),
        (
            "lr",
            f"Peak learning rate for the Adam family (log scale): {adam_note}.",
            [f"low: {_num(adam_lr[0])}", f"high: {_num(adam_lr[1])}", "log: true",
             "when: {optimizer: [adamw, adam]}"],
        ),
        (
            "lr@sgd",
            f"Peak learning rate for SGD (log scale): {sgd_note}.",
            [f"low: {_num(sgd_lr[0])}", f"high: {_num(sgd_lr[1])}", "log: true",
             "when: {optimizer: sgd}"],
        ),
        (
            "momentum",
            "SGD momentum (ignored by Adam/AdamW, so only sampled for SGD).",
            [f"choices: {_list(_momenta(baseline))}", "when: {optimizer: sgd}"],
        ),
        *(_loader_knobs(baseline, device, cpus) if dataset else []),
        *_step_knobs(baseline, device),
        *(_distill_knobs(baseline) if teacher else []),
        (
            "parallelism",
            "How a run spreads over devices: fixed at the baseline's (single: one device, "
            "nothing parallel; docs/parallel.md shows how to search ddp/fsdp/zero/pipeline).",
            [f"value: {baseline.parallelism}"],
        ),
    ]
    lines = [
        *_comment(header, ""),
        "#",
        f"#   autotune search --model {source} --space PATH",
        "#",
        *_comment(about, ""),
        f"model: {_scalar(source)}",
        f"description: {_scalar(f'default space from the baseline of {source} on {device}')}",
        "knobs:",
    ]
    for name, comment, settings in knobs:
        lines += [*_comment(comment, "  "), f"  {name}:", *(f"    {s}" for s in settings)]
    return "\n".join(lines) + "\n"


def _step_knobs(baseline: Recipe, device: str) -> list[tuple[str, str, list[str]]]:
    """Gradient clipping, the optimizer's implementation and, on CUDA, TF32 and compile (name,
    comment, settings)."""
    knobs = [
        (
            "grad_clip",
            "Clip the gradient's global norm at this value once per optimizer step (0.0: no "
            "clipping): keeps a rare huge gradient from wrecking a run at a higher learning "
            "rate, for one norm per step.",
            [f"choices: {_list(_with(GRAD_CLIPS, baseline.grad_clip))}"],
        ),
        (
            "fused_optimizer",
            "The optimizer's implementation: torch's default, or the whole update in one fused "
            "kernel (the same update with fewer passes over memory, on CPUs and GPUs).",
            [f"choices: {_list(_with(('default', 'fused'), baseline.fused_optimizer))}"],
        ),
    ]
    if device == "cuda":
        knobs.append((
            "tf32",
            "TF32 matmuls on tensor cores (Ampere and newer): several times faster fp32 "
            "matmuls with a 10-bit mantissa (left out on a CPU, which has no TF32).",
            [f"choices: {_list(_with((False, True), baseline.tf32))}"],
        ))
        knobs.append((
            "compile",
            "torch.compile the model (default mode): fused kernels for faster steps, for a "
            "compile in the first steps that the time-to-target includes, so it wins only "
            "where a trial runs long enough to pay it back (left out on a CPU, where it does "
            "not within a trial: docs/benchmarks.md).",
            [f"choices: {_list(_with(('none', 'default'), baseline.compile))}"],
        ))
    return knobs


def _distill_knobs(baseline: Recipe) -> list[tuple[str, str, list[str]]]:
    """Knowledge distillation from the task's teacher (name, comment, settings)."""
    weights = _with(DISTILL_WEIGHTS, baseline.distill_weight)
    distilling = "{distill_weight: " + _list([w for w in weights if w > 0]) + "}"
    return [
        (
            "distill_weight",
            "Share of the loss taken from the task's teacher (soft targets, KL divergence at "
            "distill_temperature) instead of the labels: richer targets can reach the target "
            "in fewer steps, for one teacher forward pass per micro-batch on the clock.",
            [f"choices: {_list(weights)}"],
        ),
        (
            "distill_temperature",
            "Softening temperature of the teacher's and the model's outputs: higher shows "
            "more of the teacher's ranking of the wrong classes.",
            [f"choices: {_list(_with(DISTILL_TEMPERATURES, baseline.distill_temperature))}",
             f"when: {distilling}"],
        ),
    ]


def _loader_knobs(baseline: Recipe, device: str, cpus: int) -> list[tuple[str, str, list[str]]]:
    """The DataLoader knobs of a Dataset task (name, comment, settings)."""
    workers = _with([w for w in LOADER_WORKERS if w <= max(1, cpus)],
                    baseline.dataloader_workers)
    with_workers = "{dataloader_workers: " + _list([w for w in workers if w > 0]) + "}"
    knobs = [
        (
            "dataloader_workers",
            "Processes that read and collate training batches while the model trains (0: the "
            f"training process reads them itself). Up to this machine's {cpus} cores: each "
            "worker beyond them would compete with training for a core.",
            [f"choices: {_list(workers)}"],
        ),
        (
            "prefetch_factor",
            "Batches each loader worker prepares ahead: more smooths uneven reading times, "
            "at the memory of the batches held.",
            [f"choices: {_list(_with(PREFETCH_FACTORS, baseline.prefetch_factor))}",
             f"when: {with_workers}"],
        ),
        (
            "persistent_workers",
            "Keep the loader workers from one epoch to the next instead of starting them "
            "again at every epoch.",
            ["choices: [false, true]", f"when: {with_workers}"],
        ),
    ]
    if device == "cuda":
        knobs.append((
            "pin_memory",
            "Page-locked batches, so the copy to the GPU runs asynchronously (left out on a "
            "CPU, where there is no copy to speed up).",
            ["choices: [false, true]"],
        ))
    return knobs


def default_space(
    baseline: Recipe, device_type: str, *, bf16_fast: bool, source: str,
    dataset: bool = False, cpus: int = 1, teacher: bool = False,
) -> SearchSpace:
    """The default search space, parsed and validated (``parse_space`` of
    ``default_space_yaml``): a bug in the generator raises ``ConfigError`` like a bad file."""
    text = default_space_yaml(baseline, device_type, bf16_fast=bf16_fast, source=source,
                              dataset=dataset, cpus=cpus, teacher=teacher)
    return parse_space(text, source=f"<default space for {source}>")


# -- values ---------------------------------------------------------------------------------


def _precisions(baseline: Recipe, device: str, *, bf16_fast: bool) -> list[str]:
    """fp32, the fast 16-bit formats of this device, and the baseline's own."""
    allowed = {"fp32", baseline.precision}
    if bf16_fast:
        allowed.add("bf16")
    if device == "cuda":
        allowed.add("fp16")
    return [p for p in ("fp32", "bf16", "fp16") if p in allowed]


def _batch_sizes(batch: int) -> list[int]:
    """The baseline's batch times 1/2, 1, 2, 4 (the warm start's x2 among them); the half only
    when it is a whole batch of at least one example."""
    sizes = [batch // 2] if batch % 2 == 0 else []
    sizes += [batch * BATCH_FACTOR**k for k in range(3)]
    return sizes


def _warmups(baseline_warmup: int) -> list[int]:
    """None, half, the warm start's and twice its warmup, and the baseline's."""
    return sorted({0, WARMUP_STEPS // 2, WARMUP_STEPS, 2 * WARMUP_STEPS, baseline_warmup})


def _momenta(baseline: Recipe) -> list[float]:
    """The usual momenta, and an SGD baseline's own."""
    if baseline.optimizer == "sgd":
        return sorted({*MOMENTA, baseline.momentum})
    return list(MOMENTA)


def _with(values: Iterable[object], own: object) -> list[object]:
    """``values`` with the baseline's own value added at the end if it is missing."""
    out = list(values)
    return out if own in out else [*out, own]


# -- YAML text ------------------------------------------------------------------------------


def _comment(text: str, indent: str) -> list[str]:
    """``text`` as YAML comment lines of at most ``COMMENT_WIDTH`` characters."""
    return textwrap.wrap(
        text, COMMENT_WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ",
        break_on_hyphens=False,
    )


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar: plain when it is a simple name, else double-quoted."""
    return text if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", text) else json.dumps(text)


def _num(value: float) -> str:
    """A float as YAML 1.1 reads it back as a float (``1.25e-04`` keeps its dot and sign),
    rounded to 3 significant digits for reading; ranges span a factor of 16 or more around
    the baseline, so the rounding never moves the baseline out."""
    text = f"{value:.3g}"
    mantissa, _, exponent = text.partition("e")
    if not exponent:
        return text if "." in text else f"{text}.0"
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}e{exponent}"


def _list(values: Iterable[object]) -> str:
    """A flow-style YAML list: ``[fp32, bf16]``, ``[0.8, 0.9]``, ``[false, true]``."""
    parts = []
    for value in values:
        if isinstance(value, bool):
            parts.append("true" if value else "false")
        elif isinstance(value, float):
            parts.append(repr(value))
        else:
            parts.append(str(value))
    return f"[{', '.join(parts)}]"
