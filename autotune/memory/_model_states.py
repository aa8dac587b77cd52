"""What a parallel mode does to one device's memory, computed from the parameter count.

A single device's step is traced (``autotune.memory._trace``); the parallel modes change its
model states (parameters, gradients, optimizer state) and add communication buffers, which this
module computes, for ``N`` workers and ``P`` trainable parameters:

================  =============================================================================
mode              per device (d = bytes of a weight: 4 for fp32; 2 for DeepSpeed's bf16/fp16)
================  =============================================================================
single            the trace as it is
ddp               + one more copy of the gradients: DDP's buckets (25 MiB each by default,
                  together as large as all gradients) stay allocated between steps
fsdp (FSDP2)      parameters, gradients and optimizer state / N; plus, during forward and
                  backward, the root group's parameters (all but the ModuleList blocks, gathered
                  for the whole pass), one gathered block, and in the backward pass one block's
                  unsharded gradients and their reduce-scatter copy
zero1, zero2      d*P weights; fp32 master partition 4P/N; optimizer state k*P/N (Adam k=8,
                  SGD with momentum 4); DeepSpeed's gradient bucket ``reduce_bucket_size``
                  elements of d bytes (x2 with ``overlap_comm``); at the step an fp32 gradient
                  partition 4P/N (and for ZeRO-2 the d-byte gradient partition)
zero3             as ZeRO-2 with the weights partitioned too (d*P/N); the d-byte gradient
                  partition is allocated at setup; during forward and backward the gathered
                  parameters: d * min(P, stage3_max_live_parameters + stage3_prefetch_bucket)
offload           master weights, optimizer state and fp32 gradients (ZeRO-3: also the weight
                  partition) live in host memory: outside a GPU's total, inside a CPU's
pipeline (N       traced on one piece (``batch_size / pipeline_microbatches`` examples); the
stages)           biggest stage, a share ``f`` of the model (``pipeline_share``): all weights
                  (each worker keeps the full model for evaluation), ``f`` of the gradients and
                  optimizer state, and ``f`` of a piece's activations times the pieces in
                  flight: all of them for GPipe, ``min(N, pieces)`` for 1F1B
================  =============================================================================

Activations and temporaries come from the trace (for DeepSpeed's bf16/fp16 modes the trace
casts the weights, as DeepSpeed does).

Each mode has three phases: ``forward_backward``, ``optimizer_step`` and ``evaluation`` (a
trial's evaluation between steps: the largest evaluation batch's forward pass without
gradients, model states resident, gradients freed by ``zero_grad(set_to_none=True)``). In the
evaluation, DDP keeps its buckets (as in every phase); FSDP gathers as in its forward pass (the
root group and one block) beside its sharded weights and optimizer state; ZeRO keeps its
resident weights, buckets and optimizer state, and ZeRO-3 gathers as in its forward pass; a
pipeline worker evaluates its full copy of the model (``evaluation_model``) beside its stage's
optimizer state, with the whole evaluation batch's activations (not a piece's). The peak is
the largest phase. These rules were checked against live measurements of
2-worker gloo runs (``benchmarks/memory_accuracy.py``). Bytes per weight and of optimizer state
per parameter come from ``autotune.knobs`` (training needs them too). ``model_states`` is the
part that DeepSpeed's own estimators also compute; ``tests/test_memory.py`` states how they
compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from autotune.knobs import optimizer_state_per_param, weight_bytes, zero_config
from autotune.memory._trace import StepTrace
from autotune.recipe import Recipe

DEEPSPEED_DEFAULTS: dict[str, Any] = {
    "reduce_bucket_size": 500_000_000,
    "overlap_comm": None,
    "stage3_max_live_parameters": 1_000_000_000,
    "stage3_prefetch_bucket_size": 50_000_000,
}
"""DeepSpeed's defaults for the ZeRO settings that size its buffers (``overlap_comm`` None:
on for ZeRO-3 only); a test checks them against ``DeepSpeedZeroConfig``."""


def deepspeed_setting(recipe: Recipe, key: str) -> Any:
    """A ZeRO setting as a trial's DeepSpeed config sets it (``autotune.knobs.zero_config``),
    else DeepSpeed's default."""
    zero = zero_config(recipe, "cuda").get("zero_optimization", {})
    value = zero.get(key, DEEPSPEED_DEFAULTS[key])
    if key == "overlap_comm" and value is None:
        return recipe.parallelism == "zero3"
    return value


@dataclass(frozen=True)
class ModelStates:
    """Model states of one device at the optimizer step, in bytes (see the module table)."""

    parameters: int
    """Weights held on the device (the device's partition for ZeRO-3 and FSDP)."""
    gradients: int
    """Gradients held on the device at the step (16-bit and fp32 partitions for ZeRO)."""
    optimizer: int
    """Optimizer state and fp32 master weights on the device."""
    offloaded: int
    """Model states held in host memory instead (offload)."""

    @property
    def device_total(self) -> int:
        return self.parameters + self.gradients + self.optimizer


def model_states(recipe: Recipe, param_count: int) -> ModelStates:
    """Model states per device at the optimizer step for ``recipe`` with ``param_count``
    parameters: the part DeepSpeed's ``estimate_zero{2,3}_model_states_mem_needs`` compute
    (without their buffers for gathered layers, which ``compose`` adds from the trace)."""
    p, n, d = param_count, recipe.workers, weight_bytes(recipe)
    k = optimizer_state_per_param(recipe)
    mode = recipe.parallelism
    if mode in ("single", "ddp"):
        grads = 4 * p * (2 if mode == "ddp" else 1)
        return ModelStates(parameters=4 * p, gradients=grads, optimizer=k * p, offloaded=0)
    if mode == "fsdp":
        return ModelStates(parameters=4 * p // n, gradients=4 * p // n, optimizer=k * p // n,
                           offloaded=0)
    weights = d * p if mode != "zero3" else d * p // n
    optimizer = 4 * p // n + k * p // n  # fp32 master partition and optimizer state
    grads_fp32 = 4 * p // n
    grads_16 = d * p // n if mode in ("zero2", "zero3") else 0
    if not recipe.offload:
        return ModelStates(parameters=weights, gradients=grads_fp32 + grads_16,
                           optimizer=optimizer, offloaded=0)
    offloaded = optimizer + grads_fp32 + grads_16 + (weights if mode == "zero3" else 0)
    return ModelStates(parameters=0 if mode == "zero3" else weights, gradients=0, optimizer=0,
                       offloaded=offloaded)


def compose(trace: StepTrace, recipe: Recipe, device_type: str) -> dict[str, Any]:
    """The fields of a ``Prediction``: the trace's phases with the recipe's parallel mode
    applied, and the larger phase taken."""
    mode = recipe.parallelism
    if mode == "single":
        phases = {name: dict(phase) for name, phase in trace.phases.items()}
        offloaded = 0
    elif mode == "ddp":
        phases = {name: _plus(phase, gradients=trace.gradient_bytes)
                  for name, phase in trace.phases.items()}
        offloaded = 0
    elif mode == "fsdp":
        phases, offloaded = _fsdp(trace, recipe), 0
    elif mode == "pipeline":
        phases, offloaded = _pipeline(trace, recipe), 0
    else:
        phases, offloaded = _zero(trace, recipe)
    if offloaded and device_type == "cpu":
        # On the CPU the host is the device: what is offloaded still counts (on a GPU it is
        # outside the device's categories already).
        phases = {name: _plus(phase, optimizer=offloaded) for name, phase in phases.items()}
    name, peak = max(phases.items(), key=lambda kv: kv[1]["total"])
    method = trace.method if mode == "single" else (
        f"{trace.method} + analytic {mode} x{recipe.workers}")
    return {
        "peak_bytes": peak["total"],
        "parameters_bytes": peak["parameters"],
        "gradients_bytes": peak["gradients"],
        "optimizer_bytes": peak["optimizer"],
        "activations_bytes": peak["activations"],
        "offloaded_bytes": offloaded,
        "device_type": device_type,
        "parallelism": mode,
        "workers": recipe.workers,
        "phase": name,
        "method": method,
    }


def _plus(phase: dict[str, int], **extra: int) -> dict[str, int]:
    out = {k: phase.get(k, 0) + extra.get(k, 0)
           for k in ("parameters", "gradients", "optimizer", "activations")}
    out["total"] = sum(out.values())
    return out


def _phase(**parts: int) -> dict[str, int]:
    return _plus({}, **parts)


def _fsdp(trace: StepTrace, recipe: Recipe) -> dict[str, dict[str, int]]:
    """FSDP2 phases (the evaluation's: see the module docstring). At the trace's
    forward/backward peak a share of the gradients exists
    (``g``, the trace's gradients then over all of them); FSDP holds that share of its
    sharded gradients, and once the backward pass has started, one block's unsharded
    gradients and their reduce-scatter copy in flight."""
    n = recipe.workers
    fb, step = trace.phases["forward_backward"], trace.phases["optimizer_step"]
    evaluation = trace.phases["evaluation"]
    sharded = trace.param_bytes // n + trace.mask_bytes // n
    block = 4 * trace.block_params
    root = 4 * (trace.param_count - trace.blocks_total_params)
    g = fb["gradients"] / trace.gradient_bytes if trace.gradient_bytes else 0.0
    in_flight = 2 * block if fb["gradients"] else 0
    return {
        "forward_backward": _phase(
            parameters=sharded + root + block + trace.teacher_bytes,
            gradients=int(g * trace.gradient_bytes / n) + in_flight,
            optimizer=trace.optimizer_bytes // n, activations=fb["activations"]),
        "optimizer_step": _phase(
            parameters=sharded + trace.teacher_bytes, gradients=trace.gradient_bytes // n,
            optimizer=step["optimizer"] // n, activations=step["activations"]),
        "evaluation": _phase(
            parameters=sharded + root + block + trace.teacher_bytes,
            optimizer=trace.optimizer_bytes // n, activations=evaluation["activations"]),
    }


def pipeline_share(trace: StepTrace, stages: int) -> float:
    """The biggest stage's share of the model: ``ceil(L / N)`` of its ``L`` blocks (the
    ``ModuleList`` the stages are cut at) plus every parameter outside the blocks (the
    embeddings and the head, which the first and last stage hold; counted in one stage, an
    upper bound). 1.0 for a model without blocks."""
    if not trace.block_params or not trace.param_count:
        return 1.0
    blocks = max(1, round(trace.blocks_total_params / trace.block_params))
    largest = math.ceil(blocks / stages) * trace.block_params
    root = trace.param_count - trace.blocks_total_params
    return min(1.0, (largest + root) / trace.param_count)


def pieces_in_flight(recipe: Recipe) -> int:
    """Pipeline micro-batches whose activations the first stage holds at once: GPipe runs
    every forward before any backward; 1F1B starts backward passes after ``N`` forwards."""
    pieces = recipe.pipeline_microbatches
    return pieces if recipe.pipeline_schedule == "gpipe" else min(recipe.workers, pieces)


def _pipeline(trace: StepTrace, recipe: Recipe) -> dict[str, dict[str, int]]:
    """Pipeline phases of the biggest stage (see the module table); ``trace`` is of one piece
    (``autotune.memory.single_device_recipe``)."""
    f = pipeline_share(trace, recipe.workers)
    fb, step = trace.phases["forward_backward"], trace.phases["optimizer_step"]
    evaluation = trace.phases["evaluation"]
    weights = trace.param_bytes + trace.mask_bytes
    return {
        "forward_backward": _phase(
            parameters=weights, gradients=int(f * fb["gradients"]),
            optimizer=int(f * trace.optimizer_bytes),
            activations=int(f * fb["activations"] * pieces_in_flight(recipe))),
        "optimizer_step": _phase(
            parameters=weights, gradients=int(f * trace.gradient_bytes),
            optimizer=int(f * step["optimizer"]), activations=step["activations"]),
        # the full model evaluates on every worker, on whole evaluation batches
        "evaluation": _phase(
            parameters=weights, optimizer=int(f * trace.optimizer_bytes),
            activations=evaluation["activations"]),
    }


def _zero(trace: StepTrace, recipe: Recipe) -> tuple[dict[str, dict[str, int]], int]:
    """ZeRO phases and the offloaded bytes (see the module table and docstring)."""
    n, d, p = recipe.workers, weight_bytes(recipe), trace.param_count
    stage = int(recipe.parallelism[-1])
    states = model_states(recipe, p)
    fb, step = trace.phases["forward_backward"], trace.phases["optimizer_step"]
    evaluation = trace.phases["evaluation"]
    bucket = int(deepspeed_setting(recipe, "reduce_bucket_size")) * d
    if stage < 3 and deepspeed_setting(recipe, "overlap_comm"):
        bucket *= 2
    # buffers, pruning masks and a distillation teacher's weights (whole on every worker)
    buffers = trace.param_bytes - d * p + trace.mask_bytes + trace.teacher_bytes
    gathered = 0
    if stage == 3:
        live = int(deepspeed_setting(recipe, "stage3_max_live_parameters")) + int(
            deepspeed_setting(recipe, "stage3_prefetch_bucket_size"))
        gathered = d * min(p, live)
    # The optimizer's temporaries (foreach Adam), as a share of its state, on a partition.
    temps = max(0, step["optimizer"] - trace.optimizer_bytes) // n
    held_16 = d * p // n if stage == 3 and not recipe.offload else 0  # allocated at setup
    resident = states.parameters + buffers
    optimizer = states.optimizer
    phases = {
        "forward_backward": _phase(
            parameters=resident + gathered, gradients=bucket + held_16 + (
                fb["gradients"] if stage == 1 else 0),
            optimizer=optimizer, activations=fb["activations"]),
        "optimizer_step": _phase(
            parameters=resident, gradients=bucket + states.gradients,
            optimizer=optimizer + (0 if recipe.offload else temps),
            activations=step["activations"]),
        # buckets and ZeRO-3's gradient partition are kept: allocated between steps
        "evaluation": _phase(
            parameters=resident + gathered, gradients=bucket + held_16, optimizer=optimizer,
            activations=evaluation["activations"]),
    }
    return phases, states.offloaded
