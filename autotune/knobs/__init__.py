"""What a recipe does to a training step, below both ``autotune.train`` and ``autotune.memory``.

- the knobs, each a pure function testable on a tiny model without a trainer: precision
  (``autocast_context``, ``make_grad_scaler``), optimizer and schedule (``build_optimizer``,
  ``build_scheduler``, ``lr_factor``), structured pruning (``prune_structured``,
  ``find_units``, ``prune_during_training``: ``prune_ratio``), weight sparsity masks
  (``prune_by_magnitude``, ``apply_masks``, ``sparsity``: ``weight_sparsity``), activation
  checkpointing (``apply_checkpointing``), gradient clipping
  (``clip_gradients``), TF32 and channels-last (``set_tf32``, ``to_channels_last``,
  ``channels_last_batch``), knowledge distillation (``distillation_loss``, ``step_loss``,
  ``load_teacher``), ``torch.compile`` (``compile_model``; ``compile_seconds`` measures
  what it cost, ``eager`` evaluates without compiling), and the knobs that cannot act in a
  run (``inactive_knobs``);
- THE training step (``optimizer_step``, module ``step``), which trials, ``autotune.configure``
  and the memory estimator's trace all run; a NaN/inf loss raises ``Diverged``;
- what both sides need to know about a recipe (module ``modes``): whether a device can run it
  (``unsupported_reason``), bytes per weight and of optimizer state, and its DeepSpeed config.

This package imports only ``autotune.recipe``, ``autotune.tasks``, ``autotune.errors`` and
torch; never training, memory, search or CLI code.
"""

from autotune.knobs.checkpointing import apply_checkpointing
from autotune.knobs.clipping import clip_gradients
from autotune.knobs.compiler import (
    compile_model,
    compile_seconds,
    eager,
    forget_compiled,
    graphs_compiled,
    use_compile_cache,
)
from autotune.knobs.device import (
    channels_last_batch,
    inactive_knobs,
    set_tf32,
    tf32_enabled,
    to_channels_last,
)
from autotune.knobs.distill import (
    DistillError,
    distill_problem,
    distillation_loss,
    distillation_term,
    freeze_teacher,
    load_teacher,
    step_loss,
)
from autotune.knobs.modes import (
    MODES,
    deepspeed_config,
    optimizer_state_per_param,
    unsupported_reason,
    weight_bytes,
    zero_config,
)
from autotune.knobs.optim import (
    FINAL_LR_FRACTION,
    build_optimizer,
    build_scheduler,
    implementation_kwargs,
    lr_factor,
)
from autotune.knobs.precision import DTYPES, autocast_context, make_grad_scaler
from autotune.knobs.pruning import apply_masks, prunable_weights, prune_by_magnitude, sparsity
from autotune.knobs.step import (
    Diverged,
    LossFn,
    loss_value,
    micro_batch_loss,
    optimizer_step,
)
from autotune.knobs.structured import (
    PruneResult,
    UnitGroup,
    apply_structured_pruning,
    count_parameters,
    find_units,
    prune_during_training,
    prune_structured,
    units_removed,
)

__all__ = [
    "DTYPES",
    "FINAL_LR_FRACTION",
    "MODES",
    "DistillError",
    "Diverged",
    "LossFn",
    "PruneResult",
    "UnitGroup",
    "apply_checkpointing",
    "apply_masks",
    "apply_structured_pruning",
    "autocast_context",
    "build_optimizer",
    "build_scheduler",
    "channels_last_batch",
    "clip_gradients",
    "compile_model",
    "compile_seconds",
    "count_parameters",
    "deepspeed_config",
    "distill_problem",
    "distillation_loss",
    "distillation_term",
    "eager",
    "find_units",
    "forget_compiled",
    "freeze_teacher",
    "graphs_compiled",
    "implementation_kwargs",
    "inactive_knobs",
    "load_teacher",
    "loss_value",
    "lr_factor",
    "make_grad_scaler",
    "micro_batch_loss",
    "optimizer_state_per_param",
    "optimizer_step",
    "prunable_weights",
    "prune_by_magnitude",
    "prune_during_training",
    "prune_structured",
    "set_tf32",
    "sparsity",
    "step_loss",
    "tf32_enabled",
    "to_channels_last",
    "units_removed",
    "unsupported_reason",
    "use_compile_cache",
    "weight_bytes",
    "zero_config",
]
