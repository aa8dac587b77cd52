"""The search backend: Ray Tune trials, Optuna proposals, ASHA early stopping.

Ray and Optuna are imported only when a search runs, so the rest of autotune works without them.
"""

from autotune.search._tune import (
    TRIALS_FILE,
    SearchConfig,
    SearchOutcome,
    check_ray_available,
    read_records,
    run_search,
)

__all__ = [
    "TRIALS_FILE",
    "SearchConfig",
    "SearchOutcome",
    "check_ray_available",
    "read_records",
    "run_search",
]
