"""autotune: find the fastest way to train a model under a memory budget.

Public API::

    # the search, from Python (the CLI calls the same)
    from autotune.search import SearchRequest, search
    outcome = search(SearchRequest(model="bert", budget_bytes=16 * 10**9, trials=12))
    outcome.summary.best.record.recipe, outcome.summary.speedup, outcome.best_recipe_path

    from autotune import Recipe, load_space, load_task, run_trial, TrialLimits
    recipe = Recipe.load("best_recipe.yaml")

    # apply it to your own model and training loop (or train a Task with autotune.fit)
    from autotune import configure, fit
    run = configure(recipe, model)
    loss = run.step(run.split(batch), loss_fn)
"""

from autotune.errors import ConfigError, UserError
from autotune.recipe import Recipe
from autotune.space import SearchSpace, load_space
from autotune.units import parse_bytes, parse_duration

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Configured",
    "SearchOutcome",
    "SearchRequest",
    "Recipe",
    "SearchSpace",
    "TrialLimits",
    "UserError",
    "configure",
    "fit",
    "load_space",
    "load_task",
    "parse_bytes",
    "parse_duration",
    "run_trial",
]


def __getattr__(name: str):  # noqa: ANN202 - lazy: importing autotune must not import torch
    if name in ("run_trial", "TrialLimits"):
        from autotune import train

        return getattr(train, name)
    if name in ("configure", "fit", "Configured"):
        from autotune import apply

        return getattr(apply, name)
    if name in ("SearchRequest", "SearchOutcome"):
        import autotune.search

        return getattr(autotune.search, name)
    if name == "load_task":
        from autotune.tasks import load_task

        return load_task
    raise AttributeError(f"module 'autotune' has no attribute {name!r}")
