"""Running a trial: a recipe applied to a real training run, timed, measured, and recorded.

- ``trial``: ``run_trial``, the entry point (one process, or several workers);
- ``loop``: one process's part of a trial (the time-to-target clock, evaluations, failures
  recorded as statuses, the CPU's measured memory);
- ``distributed``: the worker processes of a multi-worker trial on this machine;
- ``parallel``: a worker's model, optimizer and step in the recipe's parallel mode;
- ``result``: ``TrialLimits`` and ``TrialResult``, plain data.

The knobs and the training step itself are ``autotune.knobs``; memory is ``autotune.memory``.
This package knows nothing of Ray, Optuna, the CLI or the exporters.
"""

from autotune.train.distributed import (
    WorkerFailed,
    check_launch,
    result_from_final,
    run_workers,
    worker_main,
)
from autotune.train.loop import measure_step_memory, pick_device, seed_everything
from autotune.train.result import TrialLimits, TrialResult
from autotune.train.trial import run_trial

__all__ = [
    "TrialLimits",
    "TrialResult",
    "WorkerFailed",
    "check_launch",
    "measure_step_memory",
    "pick_device",
    "result_from_final",
    "run_trial",
    "run_workers",
    "seed_everything",
    "worker_main",
]
