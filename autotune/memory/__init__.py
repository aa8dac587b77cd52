"""Memory of a training run: predicted before it starts, measured while it runs, enforced.

Measured (``MemoryPeak``, ``read_peak``, ``TensorTracker``): on a GPU the CUDA allocator's
peaks; on the CPU the peak of tracked tensor memory, with the process's peak RSS beside it.
Enforced: ``cap_device_memory`` caps a GPU at the budget. Predicted: ``predict_peak`` traces a
training step and an evaluation on fake tensors and adds the parallel mode's sharding of
model states analytically; ``check_budget`` is the search's gate before launching a trial.

This package knows nothing of Ray or Optuna.
"""

from autotune.memory._measured import (
    CPU_RSS,
    CPU_TRACKED,
    CUDA_ALLOCATED,
    NOT_MEASURED,
    MemoryPeak,
    TensorTracker,
    cap_device_memory,
    is_out_of_memory,
    peak_rss_bytes,
    read_peak,
    reset_peak,
)
from autotune.memory._predict import (
    SAFETY_MARGIN,
    TRACE_CACHE,
    Prediction,
    TraceCache,
    check_budget,
    estimate_recipes,
    predict_peak,
    single_device_recipe,
    trace_key,
)
from autotune.memory._trace import StepTrace, largest_batch, largest_validation, trace_step

__all__ = [
    "CPU_RSS",
    "CPU_TRACKED",
    "CUDA_ALLOCATED",
    "NOT_MEASURED",
    "MemoryPeak",
    "SAFETY_MARGIN",
    "Prediction",
    "StepTrace",
    "TRACE_CACHE",
    "TensorTracker",
    "TraceCache",
    "cap_device_memory",
    "check_budget",
    "estimate_recipes",
    "is_out_of_memory",
    "largest_batch",
    "largest_validation",
    "peak_rss_bytes",
    "predict_peak",
    "read_peak",
    "reset_peak",
    "single_device_recipe",
    "trace_key",
    "trace_step",
]
