"""The documents a search leaves for people and tools: ``search.yaml`` (what was searched, on
what, for how long) and ``best_recipe.yaml`` (the winner first, then what it measured, the
baseline and the speedup). Plain data; ``RunDirectory`` writes them."""

from __future__ import annotations

import os
from typing import Any

import torch

from autotune.search.plan import SearchPlan
from autotune.search.provenance import cpu_model, library_versions, search_provenance
from autotune.search.winner import Candidate, Summary

__all__ = ["best_recipe_document", "device_description", "library_versions",
           "search_document"]


def device_description(device_type: str) -> str:
    if device_type.startswith("cuda"):
        return f"{device_type} ({torch.cuda.get_device_name(0)})"
    return f"cpu ({cpu_model()}, {os.cpu_count() or 1} cores)"


def search_document(plan: SearchPlan, trials_run: int, wall_seconds: float,
                    confirmation: dict[str, Any] | None = None,
                    screening: dict[str, Any] | None = None) -> dict[str, Any]:
    """``search.yaml``: the task, the search's settings and where its results are, and its
    provenance (versions, the git state of the task's code, the machine:
    ``autotune.search.provenance``). ``confirmation``: what the confirmation phase ran and
    what the time budget cut (``autotune.search._run.Confirmation``); ``screening``: each
    system configuration screened, its speed and memory, kept or dropped and why
    (``autotune.search.screening.screening_document``)."""
    r = plan.request
    budget = plan.time_budget_s
    timing = {"time_budget_s": budget,
              "within_time_budget": None if budget is None or not wall_seconds
              else wall_seconds <= budget}
    return {
        "device": device_description(plan.device_type),
        "task": {"name": r.model, "metric": plan.task.metric, "target": plan.target,
                 "higher_is_better": plan.task.higher_is_better,
                 "options": r.task_options, "description": plan.task.description},
        "search": {"seed": r.seed, "trials_run": trials_run, "budget_bytes": r.budget_bytes,
                   "space": plan.space_source, "max_train_seconds": plan.max_train_seconds,
                   "wall_seconds": round(wall_seconds, 1), **timing,
                   "confirmation": confirmation, "screening": screening,
                   "results_dir": str(plan.run_dir.path)},
        "baseline_recipe": plan.baseline.to_dict(),
        "provenance": search_provenance(r.model, plan.device_type),
    }


def _measured(c: Candidate, device: str) -> dict[str, Any]:
    best = c.record
    out: dict[str, Any] = {
        "tta_seconds": c.tta_seconds, "peak_memory_bytes": best.peak_memory_bytes,
        "peak_memory_source": best.peak_memory_source, "best_metric": best.best_metric,
        "steps": best.steps, "trial": best.trial,
    }
    if c.confirmed:
        out.update(tta_runs=c.tta_runs, tta_seeds=c.seeds, tta_spread=c.tta_spread,
                   tta_is_median_of=len(c.runs))
    out["device"] = device
    return out


def best_recipe_document(summary: Summary, search: dict[str, Any]) -> dict[str, Any]:
    """``best_recipe.yaml``: the recipe first (``Recipe.load`` reads it), then what was
    measured; ``search`` is ``search_document``'s content."""
    best = summary.best
    if best is None:
        raise ValueError("no winner: nothing to write")
    base = summary.baseline
    baseline: dict[str, Any] = {"recipe": None, "status": None, "tta_seconds": None}
    if base is not None:
        baseline = {"recipe": base.record.recipe, "status": base.record.status,
                    "tta_seconds": base.tta_seconds}
        if base.confirmed:
            baseline["tta_runs"] = base.tta_runs
        baseline["train_seconds"] = base.record.train_seconds
    return {
        "recipe": best.record.recipe,
        "measured": _measured(best, search["device"]),
        "baseline": baseline,
        "speedup": None if summary.speedup is None else round(summary.speedup, 3),
        "speedup_is_lower_bound": summary.speedup_is_lower_bound,
        "task": search["task"],
        "search": search["search"],
        "versions": library_versions(),
    }
