"""Predicted peak memory per device of a recipe, before anything trains.

``predict_peak(task, recipe, device_type)`` combines two parts:

- what a single device's training step holds, traced once per model and micro-batch on fake
  tensors (``autotune.memory._trace``): parameters, gradients, optimizer state, and the
  activations and temporaries of the recipe's micro-batch, with its precision, checkpointing,
  accumulation, pruning and optimizer; then what an evaluation between steps holds (the
  largest batch of ``eval_batch_size`` validation examples, without gradients, beside the
  model states), which is the peak of a recipe whose step holds less (checkpointing, a
  small micro-batch); and
- what the recipe's parallel mode changes in the model states, computed from the parameter
  count (``autotune.memory._model_states``): the ZeRO stages and FSDP divide what they shard by
  the worker count, offload moves optimizer state (and for ZeRO-3 parameters) to CPU memory,
  DDP adds its gradient buckets.

A GPU's prediction traces the optimizer implementation a GPU runs (``device_implementation``:
torch's default is ``foreach`` there, a loop on a CPU). Traces are cached (``TRACE_CACHE``): a
search never traces the same model and micro-batch twice, whatever the other knobs (learning
rate, schedule, parallel mode, workers) are.
``check_budget`` is what a search calls before launching a trial.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from autotune.knobs import DTYPES, distill_problem, unsupported_reason, weight_bytes
from autotune.memory._model_states import compose
from autotune.memory._trace import StepTrace, trace_step
from autotune.recipe import Recipe
from autotune.tasks import Task

DEVICE_TYPES = ("cpu", "cuda")
SAFETY_MARGIN = 0.05
"""``check_budget`` launches a recipe only if its predicted peak x 1.05 fits the budget."""


@dataclass(frozen=True)
class Prediction:
    """Predicted peak memory of one device (one worker) of a recipe's training run.

    ``peak_bytes`` is what counts against a budget: on a GPU, tensor memory on the GPU
    (``max_memory_allocated``); on the CPU, the worker process's tracked tensor memory, which
    holds what is offloaded too. The four parts add up to ``peak_bytes``; each is its value at
    the moment of the peak (during the backward pass few gradients exist yet, during the
    optimizer step all do, with the optimizer's temporaries counted as optimizer state).
    """

    peak_bytes: int
    """Predicted peak tensor memory of one device."""
    parameters_bytes: int
    """Parameters (the device's share), buffers and ``weight_sparsity`` masks at the peak."""
    gradients_bytes: int
    """Gradients at the peak, with communication buckets (DDP, ZeRO)."""
    optimizer_bytes: int
    """Optimizer state (and fp32 master weights for ZeRO mixed precision) and the step's
    temporaries, at the peak."""
    activations_bytes: int
    """Activations and temporaries of the micro-batch at the peak (gathered parameters of
    FSDP and ZeRO-3 included)."""
    offloaded_bytes: int
    """Model state held in host memory by offload (ZeRO modes). On a GPU it is outside
    ``peak_bytes``; on the CPU the host is the device, so it is inside it."""
    device_type: str
    """``cpu`` or ``cuda``: the device the prediction is for."""
    parallelism: str
    workers: int
    phase: str
    """Where the peak falls: ``forward_backward``, ``optimizer_step`` or ``evaluation`` (a
    trial's evaluation between steps, on batches of the task's ``eval_batch_size``)."""
    method: str
    """How it was obtained, e.g. ``fake_trace + analytic zero2 x2``."""

    def fits(self, budget_bytes: int | None, margin: float = 0.0) -> bool:
        """Whether the predicted peak, raised by ``margin`` (a fraction), is within
        ``budget_bytes`` (always, without a budget)."""
        return budget_bytes is None or self.peak_bytes * (1.0 + margin) <= budget_bytes

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for trial records and JSON."""
        return asdict(self)


class TraceCache:
    """Step traces (with their evaluation) by model and micro-batch (``trace_key``), least
    recently used dropped first. Thread-safe; one per process is enough (``TRACE_CACHE``)."""

    def __init__(self, max_entries: int = 128) -> None:
        self.max_entries = max_entries
        self.traces = 0
        """How many traces were run (cache misses)."""
        self.hits = 0
        self._entries: OrderedDict[tuple, tuple[Any, StepTrace]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, keep_alive: Any, make: Callable[[], StepTrace]) -> StepTrace:
        """The trace for ``key``, made by ``make`` on a miss. ``keep_alive`` is held with the
        entry (the task's model factory, whose id may be part of the key)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
        trace = make()
        with self._lock:
            self.traces += 1
            self._entries[key] = (keep_alive, trace)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return trace

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.traces = self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)


TRACE_CACHE = TraceCache()
"""The process's cache of step traces, used by ``predict_peak`` unless told otherwise."""


def trace_key(task: Task, recipe: Recipe) -> tuple:
    """What a step trace depends on: the task (its load spec, which names the model and its
    options, or the identity of its model factory), the micro-batch size, precision,
    checkpointing, the optimizer (and whether it keeps momentum or applies weight decay) and
    its implementation (``fused_optimizer``: a loop, foreach and fused steps hold different
    temporaries), whether gradients are accumulated, the structured pruning ratio at step 0
    (it shrinks the model), whether ``weight_sparsity`` masks exist, whether a distillation
    teacher runs beside the model, whether the weights are cast to 16 bits (DeepSpeed's
    bf16/fp16), and the task's ``eval_batch_size`` (the evaluation phase's batch). Learning
    rate, schedule, warmup, parallel mode and worker count do not change a device's step."""
    if task.load_spec is not None:
        identity = "spec:" + json.dumps(task.load_spec, sort_keys=True, default=str)
    else:
        identity = f"factory:{task.name}:{id(task.build_model):x}"
    return (
        identity,
        _traced_batch_size(recipe),
        recipe.precision,
        recipe.checkpointing,
        recipe.optimizer,
        recipe.fused_optimizer,
        recipe.optimizer == "sgd" and recipe.momentum > 0,
        recipe.weight_decay > 0,
        recipe.accumulation_steps > 1,
        recipe.prune_ratio if recipe.prune_after_steps == 0 else 0.0,
        recipe.weight_sparsity > 0,
        recipe.distill_weight > 0,
        weight_bytes(recipe),
        task.eval_batch_size,
    )


def _traced_batch_size(recipe: Recipe) -> int:
    """The micro-batch a device's trace runs: a pipeline's piece of the batch, else the
    batch."""
    if recipe.parallelism == "pipeline":
        return recipe.batch_size // recipe.pipeline_microbatches
    return recipe.batch_size


def single_device_recipe(recipe: Recipe) -> Recipe:
    """The recipe whose one-device step is traced for ``recipe`` (its parallel mode removed;
    accumulation reduced to 2, which holds the same tensors as any larger count; for a
    pipeline, the batch is one of its pieces, ``batch_size / pipeline_microbatches``)."""
    return recipe.replace(parallelism="single", workers=1, offload=False,
                          accumulation_steps=min(recipe.accumulation_steps, 2),
                          batch_size=_traced_batch_size(recipe), pipeline_microbatches=4,
                          pipeline_schedule="gpipe")


def device_implementation(recipe: Recipe, device_type: str) -> Recipe:
    """``recipe`` with the optimizer implementation that ``device_type`` runs for it.

    ``fused_optimizer: default`` is torch's choice, which depends on the device
    (``torch.optim.optimizer._default_to_fused_or_foreach``): a loop over the parameters on a
    CPU, ``foreach`` on a GPU. Their temporaries differ: Adam's ``foreach`` step holds the
    square roots of all second moments at once (one more copy of the parameters), the loop
    one parameter's at a time. The trace runs on CPU tensors, so for a GPU the ``foreach``
    implementation is traced by name. Measured: BERT-base, fp32, batch 32, checkpointing,
    on the CPU tracker, 1.80 GiB for the loop and 2.03 GiB for ``foreach``; the H200 measured
    2.13 GiB (2.07 GiB of it the trial's own) where 1.80 GiB had been predicted."""
    if device_type == "cuda" and recipe.fused_optimizer == "default":
        return recipe.replace(fused_optimizer="foreach")
    return recipe


def predict_peak(
    task: Task, recipe: Recipe, device_type: str = "cpu", *, cache: TraceCache | None = None
) -> Prediction:
    """Predict the peak memory of one device of ``recipe``'s training run (see the module
    docstring). ``device_type`` is ``cpu`` or ``cuda``; the step is traced on the CPU either
    way (fake CUDA tensors need a CUDA build), with the optimizer implementation the device
    runs (``device_implementation``), and a CUDA prediction moves offloaded state out of the
    device's total."""
    if device_type not in DEVICE_TYPES:
        raise ValueError(f"device_type must be one of {', '.join(DEVICE_TYPES)}; got "
                         f"{device_type!r}")
    cache = TRACE_CACHE if cache is None else cache
    recipe = device_implementation(recipe, device_type)
    traced = single_device_recipe(recipe)
    dtype = None if weight_bytes(recipe) == 4 else DTYPES[recipe.precision]
    trace = cache.get(trace_key(task, recipe), task.build_model,
                      lambda: trace_step(task, traced, weights_dtype=dtype))
    return Prediction(**compose(trace, recipe, device_type))


def check_budget(
    task: Task, recipe: Recipe, budget_bytes: int | None, device_type: str = "cpu",
    *, margin: float = SAFETY_MARGIN, cache: TraceCache | None = None,
) -> tuple[bool, Prediction]:
    """``(fits, prediction)``: whether ``recipe``'s predicted peak per device, raised by the
    safety ``margin``, is within ``budget_bytes`` (always true without a budget).

    A search calls this before launching a trial and records a recipe that does not fit as
    infeasible, with its prediction, without running it. The margin covers what the trace
    cannot see: the estimator's error on the CPU is well under 1% on the built-in tasks
    (``benchmarks/memory_accuracy.py``), but a GPU adds allocator rounding and library
    workspaces (cuBLAS, NCCL) that a CPU trace does not hold.
    """
    prediction = predict_peak(task, recipe, device_type, cache=cache)
    return prediction.fits(budget_bytes, margin), prediction


def estimate_recipes(
    task: Task, recipes: list[Recipe], budget_bytes: int | None, device_type: str = "cpu",
    *, margin: float = SAFETY_MARGIN, cache: TraceCache | None = None,
) -> list[dict[str, Any]]:
    """One row per recipe for ``autotune estimate``: ``recipe`` (its knobs), ``prediction``
    (``Prediction.to_dict()``) and ``fits`` (``check_budget``), or ``unsupported`` (why the
    recipe cannot run on ``device_type``, e.g. DeepSpeed's fp16 on a CPU, or on ``task``: it
    distils and the task has no teacher) instead."""
    rows: list[dict[str, Any]] = []
    for recipe in recipes:
        reason = unsupported_reason(recipe, device_type) or distill_problem(task, recipe)
        row: dict[str, Any] = {"recipe": recipe.to_dict(), "unsupported": reason}
        if reason is None:
            fits, prediction = check_budget(task, recipe, budget_bytes, device_type,
                                            margin=margin, cache=cache)
            row.update(prediction=prediction.to_dict(), fits=fits)
        rows.append(row)
    return rows
