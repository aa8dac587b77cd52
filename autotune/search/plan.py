"""A search request resolved against its task: the space, the baseline, the target, the limits,
the warm start and the run directory. Made by ``autotune.search.api`` before the first trial;
the Ray side runs it. No Ray or Optuna here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.errors import ConfigError
from autotune.recipe import Recipe
from autotune.results import RunDirectory
from autotune.search.settings import CONFIRM_SHARE, SearchRequest
from autotune.space import SearchSpace
from autotune.tasks import Task
from autotune.warm_start import WarmStart


@dataclass(frozen=True)
class SearchPlan:
    """What one run of a search does (see the module docstring)."""

    request: SearchRequest
    task: Task
    space: SearchSpace
    space_source: str
    """Where the space came from: a path, or the default space's description."""
    baseline: Recipe
    target: float
    max_train_seconds: float
    time_budget_s: float | None
    """Search time left for this run (a resumed search counts its earlier runs)."""
    workers_per_trial: int
    run_dir: RunDirectory
    output: Path
    device_type: str
    suggestions: tuple[WarmStart, ...] = ()
    """The warm start, already moved into the space: the general rules' recipes (and the
    task's own suggestions where asked for), each named."""
    space_text: str = ""
    """The space as YAML text: copied to the run directory (a default space is generated)."""
    default_space: bool = False
    """The space was generated from the task's baseline (no ``--space``, none ships)."""

    @property
    def baseline_point(self) -> dict[str, Any]:
        return self.space.point_for(self.baseline)

    def warm_points(self) -> list[dict[str, Any]]:
        """The baseline's point first, then each warm-start recipe's that lies in the space
        (once), at most ``trials`` in all."""
        points = [self.baseline_point]
        for ws in self.suggestions:
            try:
                point = self.space.point_for(ws.recipe)
            except ConfigError:
                continue
            if point not in points:
                points.append(point)
        return points[: self.request.trials]

    def warm_name(self, point: dict[str, Any]) -> str | None:
        """The name of the warm-start rule that proposed ``point`` (None: not a warm start)."""
        key = json.dumps(point, sort_keys=True, default=str)
        for ws in self.suggestions:
            try:
                if json.dumps(self.space.point_for(ws.recipe), sort_keys=True,
                              default=str) == key:
                    return ws.name
            except ConfigError:
                continue
        return None

    def confirm_share(self) -> float:
        """Share of the time budget kept for confirmation runs (0 without them)."""
        r = self.request
        return CONFIRM_SHARE if r.confirm_top > 0 and r.confirm_seeds > 0 else 0.0
