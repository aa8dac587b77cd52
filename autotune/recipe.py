"""The recipe: one complete setting of every training knob, as plain data.

A ``Recipe`` is frozen and holds only str/int/float/bool values, so it round-trips exactly
through YAML (``Recipe.from_yaml(r.to_yaml()) == r``) and through the flat parameter dicts that
a searcher proposes. It knows nothing of torch: ``autotune.train`` applies it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from autotune.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "linear", "cosine")
PARALLELISMS = ("single", "ddp", "fsdp", "zero1", "zero2", "zero3", "pipeline")
ZERO_MODES = ("zero1", "zero2", "zero3")
OPTIMIZER_IMPLEMENTATIONS = ("default", "foreach", "fused")
"""Values of ``fused_optimizer``. ``default`` rather than ``off``: YAML 1.1 reads a bare ``off``
as false, and torch's default is itself ``foreach`` on a GPU."""
PIPELINE_SCHEDULES = ("gpipe", "1f1b")
"""Values of ``pipeline_schedule``: ``torch.distributed.pipelining``'s ``ScheduleGPipe`` (all
forwards, then all backwards) or ``Schedule1F1B`` (one forward, one backward: fewer
micro-batches' activations held at once)."""
COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs", "reduce-overhead")
"""Values of ``compile``: ``none`` (eager) or a ``torch.compile`` mode. ``none`` rather than
``off``: YAML 1.1 reads a bare ``off`` as false. ``reduce-overhead`` (CUDA graphs) needs a GPU."""


@dataclass(frozen=True)
class Recipe:
    """Every knob of a training run. Defaults are the baseline recipe's values."""

    precision: str = "fp32"
    """Compute precision: ``fp32``; ``bf16`` or ``fp16`` autocast (fp16 adds a grad scaler)."""
    batch_size: int = 32
    """Micro-batch size per device: examples in one forward/backward pass."""
    accumulation_steps: int = 1
    """Micro-batches whose gradients are summed before one optimizer step."""
    prune_ratio: float = 0.0
    """Structured pruning: the fraction of the model's prunable units removed by magnitude
    (feed-forward hidden units, attention heads, convolution channels), leaving smaller dense
    layers that do less work in every later step. 0.0 does not prune."""
    prune_after_steps: int = 0
    """Optimizer steps of dense training before the structured prune (a short warm phase lets
    weight magnitudes mean something); 0 prunes the initial model before the first step.
    Only with ``prune_ratio`` > 0."""
    weight_sparsity: float = 0.0
    """Unstructured magnitude sparsity: the fraction of each weight matrix zeroed (smallest
    magnitudes) and held at zero. A regulariser, not a speed knob: the same dense matmuls run,
    plus the masking, so it can only cost time; kept out of the speed spaces."""
    warmup_steps: int = 0
    """Optimizer steps of linear learning-rate warmup from 0 to ``lr``."""
    schedule: str = "constant"
    """After warmup: ``constant``, or ``linear``/``cosine`` decay to 10% of ``lr`` at
    ``decay_steps`` optimizer steps, constant after."""
    decay_steps: int = 2000
    """Optimizer step at which a decaying schedule reaches its final value."""
    optimizer: str = "adamw"
    """``sgd`` (with ``momentum``), ``adam`` or ``adamw``."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.01
    """Weight decay (decoupled for AdamW, L2 for SGD and Adam)."""
    momentum: float = 0.9
    """SGD momentum; ignored by Adam and AdamW."""
    parallelism: str = "single"
    """``single`` (one device); ``ddp``, ``fsdp``, ``zero1``-``zero3`` run several data-parallel
    workers; ``pipeline`` splits the model into ``workers`` stages, one per worker."""
    workers: int = 1
    """Devices (processes) one training run uses; 1 for ``single``."""
    offload: bool = False
    """Offload optimizer state (and ZeRO-3 parameters) to CPU memory; ZeRO modes only."""
    checkpointing: bool = False
    """Activation (gradient) checkpointing: keep only each transformer block's inputs in the
    forward pass and recompute the rest in the backward pass. Trades about one more forward
    pass of compute for activation memory; often what lets a larger batch fit a budget."""
    dataloader_workers: int = 0
    """Worker processes that load training batches (the ``DataLoader``'s ``num_workers``); 0
    loads them in the training process. Acts on tasks whose data is a ``Dataset``; a task
    that holds tensors slices its batches on the device and has no DataLoader to tune."""
    pin_memory: bool = False
    """Load batches into page-locked host memory so the copy to a GPU is asynchronous. No
    effect on a CPU-only device (a trial records it as inactive there)."""
    prefetch_factor: int = 2
    """Batches each loader worker prepares ahead (torch's default 2); only with workers."""
    persistent_workers: bool = False
    """Keep the loader workers alive from one epoch to the next instead of starting them
    again at every epoch; only with workers."""
    grad_clip: float = 0.0
    """Largest global L2 norm of the gradient: once per optimizer step, the summed gradient
    (after accumulation, the workers' averaging and fp16 unscaling) is scaled down to this
    norm when it is larger; 0.0 does not clip. Keeps the rare huge gradient from wrecking a
    run, which is what lets a larger learning rate stay stable; costs one norm per step."""
    tf32: bool = False
    """TF32 matmuls on CUDA GPUs (Ampere and newer): fp32 inputs multiplied on tensor cores
    with a 10-bit mantissa, several times faster than full fp32. ``False`` keeps torch's
    defaults (fp32 matmuls; cuDNN convolutions in TF32 either way). A CPU has no TF32: a
    recipe with it is infeasible there."""
    channels_last: bool = False
    """Convolution weights and 4-D inputs in the channels-last (NHWC) memory format, which
    tensor cores and oneDNN convolve faster. A recorded no-op for a model without 2-D
    convolutions."""
    fused_optimizer: str = "default"
    """The optimizer's implementation: ``default`` (torch's choice: a loop over the parameters on
    a CPU, ``foreach`` on a GPU), ``foreach`` (each operation over all parameters at once) or
    ``fused`` (the whole update in one kernel). The same update with fewer passes over memory;
    no effect on DeepSpeed's own CPU Adam (ZeRO offload)."""
    pipeline_microbatches: int = 4
    """With ``pipeline``: the micro-batches each batch is split into as it flows through the
    stages (more keeps stages busier; each is smaller). Must divide ``batch_size``."""
    pipeline_schedule: str = "gpipe"
    """With ``pipeline``: ``gpipe`` or ``1f1b`` (``PIPELINE_SCHEDULES``)."""
    distill_weight: float = 0.0
    """Knowledge distillation from the task's teacher: the loss is ``(1 - w) x task loss + w x
    T^2 x KL(teacher || student)`` on outputs softened by temperature ``T``. 0.0 trains on the
    task loss alone; > 0 needs a task with a teacher. The teacher's forward pass is on the
    training clock."""
    distill_temperature: float = 2.0
    """Softening temperature ``T`` of the distillation term; only with ``distill_weight`` > 0."""
    compile: str = "none"
    """``torch.compile`` the model: ``none`` (eager), or a mode: ``default``,
    ``max-autotune-no-cudagraphs`` (longer compile, benchmarked kernel choices) or
    ``reduce-overhead`` (CUDA graphs; GPUs only). The compilation runs in the first optimizer
    steps and is on the training clock: a trial's time-to-target includes it, as a user's run
    pays it (``compile_seconds`` records it apart)."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("recipe", problems)

    # -- validation -------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Every rule this recipe breaks, one line each (empty when valid)."""
        values = dataclasses.asdict(self)
        coerced, type_problems = _coerce(values)
        for key, value in coerced.items():  # an int given for a float knob: store a float
            if type(value) is not type(values[key]):
                object.__setattr__(self, key, value)
        # The rules between knobs run on the knobs that parsed, so both kinds are reported.
        return type_problems + recipe_problems(coerced)

    # -- conversions ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every knob, in field order."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "recipe") -> Recipe:
        """Build a recipe from knob values; every problem (unknown key, wrong type, broken rule)
        is reported at once in one ``ConfigError`` naming ``source``."""
        known = {f.name for f in fields(cls)}
        problems = [
            f"unknown knob {k!r}; known knobs: {', '.join(sorted(known))}"
            for k in data
            if k not in known
        ]
        values = {k: v for k, v in data.items() if k in known}
        coerced, type_problems = _coerce(values)
        problems += type_problems
        # Knobs left out take the baseline's value; a knob that did not parse is left out of
        # the rules (see recipe_problems) rather than judged by a default the user never wrote.
        unparsed = values.keys() - coerced.keys()
        merged = {**dataclasses.asdict(cls()), **coerced}
        problems += recipe_problems({k: v for k, v in merged.items() if k not in unparsed})
        if problems:
            raise ConfigError(source, problems)
        return cls(**coerced)

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some knobs changed (validated)."""
        return Recipe.from_dict({**self.to_dict(), **changes})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "recipe") -> Recipe:
        data = yaml.safe_load(text)
        if not isinstance(data, Mapping):
            raise ConfigError(source, [f"expected a mapping of knob: value, got {data!r}"])
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Load a recipe file: either a plain recipe, or a ``best_recipe.yaml`` written by a
        search (whose knobs are under its ``recipe:`` key)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(str(path), ["file not found"]) from None
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
        if isinstance(data, Mapping) and isinstance(data.get("recipe"), Mapping):
            data = data["recipe"]
        if not isinstance(data, Mapping):
            raise ConfigError(str(path), [f"expected a mapping of knob: value, got {data!r}"])
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def describe(self) -> str:
        """Compact one-line form for progress tables: only what differs from the baseline."""
        base = Recipe()
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("precision", "batch_size", "optimizer", "lr") or value != getattr(
                base, f.name
            ):
                if f.name == "momentum" and self.optimizer != "sgd":
                    continue
                if f.name == "decay_steps" and self.schedule == "constant":
                    continue
                parts.append(f"{_SHORT.get(f.name, f.name)}={_fmt(value)}")
        return " ".join(parts)


_SHORT = {
    "precision": "prec",
    "batch_size": "bs",
    "accumulation_steps": "accum",
    "prune_ratio": "prune",
    "prune_after_steps": "prune_after",
    "weight_sparsity": "sparsity",
    "pipeline_microbatches": "pp_micro",
    "pipeline_schedule": "pp_sched",
    "distill_weight": "distill",
    "distill_temperature": "distill_T",
    "warmup_steps": "warmup",
    "optimizer": "opt",
    "weight_decay": "wd",
    "parallelism": "par",
    "checkpointing": "ckpt",
    "dataloader_workers": "loaders",
    "pin_memory": "pin",
    "prefetch_factor": "prefetch",
    "persistent_workers": "persist",
    "grad_clip": "clip",
    "tf32": "tf32",
    "channels_last": "nhwc",
    "fused_optimizer": "optimpl",
    "compile": "compile",
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def knob_types() -> dict[str, type]:
    """Python type of every knob (``int``, ``float``, ``str``, ``bool``)."""
    hints = {"str": str, "int": int, "float": float, "bool": bool}
    return {f.name: hints[str(f.type)] for f in fields(Recipe)}


def _coerce(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Check each value's type; ints are accepted for floats, and numeric strings such as
    ``1e-4`` (which YAML 1.1 reads as a string) for numbers."""
    types = knob_types()
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in values.items():
        ok, converted = coerce_value(types[key], value)
        if ok:
            out[key] = converted
        else:
            hint = ""
            if types[key] is str and isinstance(value, bool):
                hint = (" (YAML 1.1 reads a bare off/on/yes/no as a boolean: "
                        + _BOOLEAN_HINTS.get(key, "quote the value") + ")")
            problems.append(
                f"{key}: expected {types[key].__name__}, got {value!r} ({type(value).__name__})"
                + hint
            )
    return out, problems


_BOOLEAN_HINTS = {"fused_optimizer": "quote the value, or write default",
                  "compile": "write none for no compilation (quoting off does not help)"}
"""What to write instead of a bare ``off`` for the str knobs whose plain value is another word."""


def coerce_value(kind: type, value: Any) -> tuple[bool, Any]:
    """``(True, value as kind)`` when ``value`` is a valid ``kind``, else ``(False, value)``."""
    if kind is bool:
        return (True, value) if isinstance(value, bool) else (False, value)
    if isinstance(value, bool):
        return False, value
    if kind is int:
        if isinstance(value, int):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return False, value
    if kind is float:
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    return (True, value) if isinstance(value, str) else (False, value)


def recipe_problems(r: Mapping[str, Any]) -> list[str]:
    """The rules on knob values and between knobs, as messages that state the rule and echo the
    value. ``r`` holds knob values of the right type; a rule that needs a knob ``r`` lacks (one
    whose value did not parse) is skipped, so every other rule is still checked."""
    p: list[str] = []

    def has(*keys: str) -> bool:
        return all(key in r for key in keys)

    def choice(key: str, allowed: tuple[str, ...]) -> None:
        if has(key) and r[key] not in allowed:
            p.append(f"{key}: must be one of {', '.join(allowed)}; got {r[key]!r}")

    choice("precision", PRECISIONS)
    choice("optimizer", OPTIMIZERS)
    choice("schedule", SCHEDULES)
    choice("parallelism", PARALLELISMS)
    choice("fused_optimizer", OPTIMIZER_IMPLEMENTATIONS)
    choice("compile", COMPILE_MODES)
    choice("pipeline_schedule", PIPELINE_SCHEDULES)
    for key in ("batch_size", "accumulation_steps", "workers", "decay_steps",
                "pipeline_microbatches"):
        if has(key) and r[key] < 1:
            p.append(f"{key}: must be >= 1; got {r[key]!r}")
    if has("prefetch_factor") and r["prefetch_factor"] < 1:
        p.append(f"prefetch_factor: must be >= 1; got {r['prefetch_factor']!r}")
    if has("dataloader_workers") and r["dataloader_workers"] < 0:
        p.append(f"dataloader_workers: must be >= 0; got {r['dataloader_workers']!r}")
    if has("dataloader_workers", "prefetch_factor", "persistent_workers") \
            and r["dataloader_workers"] == 0:
        for key, default in (("prefetch_factor", 2), ("persistent_workers", False)):
            if r[key] != default:
                p.append(f"{key}: applies only with loader workers (dataloader_workers >= 1); "
                         f"got {r[key]!r} with dataloader_workers 0")
    if has("warmup_steps") and r["warmup_steps"] < 0:
        p.append(f"warmup_steps: must be >= 0; got {r['warmup_steps']!r}")
    if has("prune_ratio") and not 0.0 <= r["prune_ratio"] < 1.0:
        p.append(f"prune_ratio: must satisfy 0 <= prune_ratio < 1; got {r['prune_ratio']!r}")
    if has("weight_sparsity") and not 0.0 <= r["weight_sparsity"] < 1.0:
        p.append(f"weight_sparsity: must satisfy 0 <= weight_sparsity < 1; got "
                 f"{r['weight_sparsity']!r}")
    if has("prune_after_steps") and r["prune_after_steps"] < 0:
        p.append(f"prune_after_steps: must be >= 0; got {r['prune_after_steps']!r}")
    if has("prune_after_steps", "prune_ratio") and r["prune_after_steps"] > 0 \
            and r["prune_ratio"] == 0:
        p.append(f"prune_after_steps: applies only with structured pruning (prune_ratio > 0); "
                 f"got {r['prune_after_steps']!r} with prune_ratio 0")
    if has("prune_after_steps", "prune_ratio", "parallelism") and r["prune_after_steps"] > 0 \
            and r["prune_ratio"] > 0 and r["parallelism"] != "single":
        p.append(f"prune_after_steps: pruning during training runs in a single process only; "
                 f"got {r['prune_after_steps']!r} with parallelism {r['parallelism']!r} (use "
                 f"prune_after_steps 0, which prunes before the first step in every mode)")
    if has("distill_weight") and not 0.0 <= r["distill_weight"] <= 1.0:
        p.append(f"distill_weight: must satisfy 0 <= distill_weight <= 1; got "
                 f"{r['distill_weight']!r}")
    if has("distill_temperature") and not (math.isfinite(r["distill_temperature"])
                                           and r["distill_temperature"] > 0):
        p.append(f"distill_temperature: must be a positive finite number; got "
                 f"{r['distill_temperature']!r}")
    if has("distill_weight", "distill_temperature") and r["distill_weight"] == 0 \
            and r["distill_temperature"] != 2.0:
        p.append(f"distill_temperature: applies only with distillation (distill_weight > 0); "
                 f"got {r['distill_temperature']!r} with distill_weight 0")
    if has("distill_weight", "parallelism") and r["distill_weight"] > 0 \
            and r["parallelism"] == "pipeline":
        p.append(f"distill_weight: distillation is not supported with parallelism pipeline (the "
                 f"last stage holds the logits, with no teacher beside it); got "
                 f"{r['distill_weight']!r} with parallelism 'pipeline'")
    if has("parallelism", "pipeline_microbatches", "pipeline_schedule") \
            and r["parallelism"] != "pipeline":
        for key, default in (("pipeline_microbatches", 4), ("pipeline_schedule", "gpipe")):
            if r[key] != default:
                p.append(f"{key}: applies only with parallelism pipeline; got {r[key]!r} with "
                         f"parallelism {r['parallelism']!r}")
    if has("parallelism", "workers") and r["parallelism"] == "pipeline" and r["workers"] < 2:
        p.append(f"workers: pipeline splits the model into one stage per worker, so workers "
                 f"must be >= 2; got {r['workers']!r}")
    if has("parallelism", "batch_size", "pipeline_microbatches") \
            and r["parallelism"] == "pipeline" and r["pipeline_microbatches"] >= 1 \
            and r["batch_size"] % r["pipeline_microbatches"]:
        p.append(f"pipeline_microbatches: must divide batch_size; got "
                 f"{r['pipeline_microbatches']!r} with batch_size {r['batch_size']!r}")
    if has("lr") and not (math.isfinite(r["lr"]) and r["lr"] > 0):
        p.append(f"lr: must be a positive finite number; got {r['lr']!r}")
    if has("weight_decay") and not r["weight_decay"] >= 0:
        p.append(f"weight_decay: must be >= 0; got {r['weight_decay']!r}")
    if has("grad_clip") and not (math.isfinite(r["grad_clip"]) and r["grad_clip"] >= 0):
        p.append(f"grad_clip: must be a finite number >= 0 (0 does not clip); got "
                 f"{r['grad_clip']!r}")
    if has("momentum") and not 0.0 <= r["momentum"] < 1.0:
        p.append(f"momentum: must satisfy 0 <= momentum < 1; got {r['momentum']!r}")
    if has("parallelism", "workers") and r["parallelism"] == "single" and r["workers"] != 1:
        p.append(
            f"workers: parallelism 'single' runs on one device, so workers must be 1; got "
            f"{r['workers']!r} (choose ddp, fsdp or a zero mode for several workers)"
        )
    if has("offload", "parallelism") and r["offload"] and r["parallelism"] not in ZERO_MODES:
        p.append(
            f"offload: CPU offload applies only to the ZeRO modes ({', '.join(ZERO_MODES)}); "
            f"got parallelism {r['parallelism']!r}"
        )
    return p


BASELINE_NOTE = (
    "fp32, the task's default batch size and learning rate, AdamW, constant learning rate, "
    "no warmup, no accumulation, no pruning, no distillation, one device, data loaded in the "
    "training process"
)


def baseline_recipe(batch_size: int, lr: float) -> Recipe:
    """The plain recipe a careful user writes first; every speedup is measured against it."""
    return Recipe(batch_size=batch_size, lr=lr)
