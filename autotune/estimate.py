"""What ``autotune estimate`` computes: the memory-relevant grid of a search space and each of
its recipes' predicted peak per device, without training.

The grid takes every combination of the knobs that change memory (precision, batch size,
parallel mode, activation checkpointing, offload) and, for the other knobs, their most
memory-hungry value in the space (the optimizer with the largest state, the most accumulation,
the lowest structured pruning ratio, which keeps the largest model, and the highest
``weight_sparsity``, whose masks are held). A space-less task gets a default grid:
fp32/bf16/fp16 x half, once and twice its batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.knobs import optimizer_state_per_param
from autotune.memory import estimate_recipes
from autotune.recipe import Recipe, baseline_recipe
from autotune.space import SearchSpace, load_space, parse_space, shipped_space_path
from autotune.tasks import Task

GRID_KNOBS = ["precision", "batch_size", "parallelism", "checkpointing", "offload"]


@dataclass(frozen=True)
class Estimate:
    """The predicted peaks of a space's grid (``rows``: ``autotune.memory.estimate_recipes``)."""

    rows: list[dict[str, Any]]
    space_source: str
    """The space file, or why the default grid was used."""
    fixed: Recipe
    """The recipe the grid varies: the non-grid knobs at their hungriest."""
    budget_bytes: int | None

    @property
    def fitting(self) -> int:
        return sum(1 for r in self.rows if r.get("fits"))

    @property
    def runnable(self) -> int:
        return sum(1 for r in self.rows if r.get("prediction"))


def space_for(model: str, task: Task, path: str | None) -> tuple[SearchSpace, str]:
    """The space to estimate: ``path``, the shipped one, or the default grid."""
    space_path = Path(path) if path else shipped_space_path(model)
    if path is None and not space_path.exists():
        half = max(1, task.default_batch_size // 2)
        sizes = sorted({half, task.default_batch_size, 2 * task.default_batch_size})
        space = parse_space(f"knobs:\n  precision: {{choices: [fp32, bf16, fp16]}}\n"
                            f"  batch_size: {{choices: {sizes}}}\n", source="default grid")
        return space, f"no space ships for {model!r}: default grid"
    return load_space(space_path), str(space_path)


def grid_recipes(space: SearchSpace, baseline: Recipe, workers: list[int]) -> list[Recipe]:
    """Every memory-relevant combination (see the module docstring); a parallel mode once per
    worker count in ``workers``."""

    def hungriest_optimizer(values: tuple) -> str:
        return max(values, key=lambda o: optimizer_state_per_param(baseline.replace(optimizer=o)))

    pick = {"optimizer": hungriest_optimizer, "accumulation_steps": max, "prune_ratio": min,
            "weight_sparsity": max, "distill_weight": max}  # a teacher beside the model
    grid = space.grid(baseline, GRID_KNOBS, pick)
    return [r if r.parallelism == "single" else r.replace(workers=n)
            for r in grid for n in ([1] if r.parallelism == "single" else workers)]


def estimate_space(task: Task, model: str, space_path: str | None, workers: list[int],
                   budget_bytes: int | None, device_type: str) -> Estimate:
    """Predict the peak per device of the space's grid for ``task`` on ``device_type``."""
    space, source = space_for(model, task, space_path)
    baseline = baseline_recipe(task.default_batch_size, task.default_lr)
    recipes = grid_recipes(space, baseline, workers)
    fixed = recipes[0] if recipes else baseline
    if recipes:
        fixed = fixed.replace(accumulation_steps=max(r.accumulation_steps for r in recipes),
                              prune_ratio=min(r.prune_ratio for r in recipes),
                              weight_sparsity=max(r.weight_sparsity for r in recipes))
    rows = estimate_recipes(task, recipes, budget_bytes, device_type)
    return Estimate(rows=rows, space_source=source, fixed=fixed, budget_bytes=budget_bytes)
