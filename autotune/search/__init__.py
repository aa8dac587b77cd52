"""The search: a Python API (``search``) over Ray Tune trials and Optuna proposals.

Modules, in the order a search goes through them:

- ``settings``: ``SearchRequest``, the typed settings and their defaults (one source).
- ``api``: ``search(request) -> SearchOutcome``: resume, paths, lock, files, the verdict.
- ``plan``: the request resolved against its task (space, baseline, target, warm start).
- ``_run``: one run on Ray Tune: screening, the search phase, then the confirmation phase.
- ``screening``: the system configurations, the keep rule, the restricted space and its warm
  start (pure); ``_screener``: their timed steps as Ray tasks.
- ``_ray``: Ray start-up and shutdown, SIGTERM, trial resources and placement.
- ``_searcher``: Optuna's ask/tell study in the run directory, the memory gate, the deadline.
- ``_scheduler``: ASHA plus the time-aware stopping rule.
- ``_trainable``: what runs in a trial process; ``_workers``: a trial's workers as Ray actors.
- ``_recorder``: trial events to typed records in the run directory, and progress events.
- ``winner``: confirmation points, medians over seeds, the winner and the speedup.
- ``documents``: the content of ``search.yaml`` and ``best_recipe.yaml``.

Importing this package imports neither Ray nor Optuna; ``search`` imports them when it runs,
and says what to install when they are missing.
"""

from autotune.search.api import (
    SearchInterrupted,
    SearchOutcome,
    check_ray_available,
    search,
)
from autotune.search.plan import SearchPlan
from autotune.search.settings import (
    DEFAULT_TIME_BUDGET_S,
    DEFAULT_TRIALS,
    SearchRequest,
)
from autotune.search.winner import Candidate, Summary, summarize

__all__ = [
    "DEFAULT_TIME_BUDGET_S",
    "DEFAULT_TRIALS",
    "Candidate",
    "SearchInterrupted",
    "SearchOutcome",
    "SearchPlan",
    "SearchRequest",
    "Summary",
    "check_ray_available",
    "search",
    "summarize",
]
