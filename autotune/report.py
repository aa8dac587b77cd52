"""Turning trial records into what a user reads: progress lines, a leaderboard, the speedup
over the baseline, and ``best_recipe.yaml``. Pure formatting and file writing; no training.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autotune import objective
from autotune.units import format_bytes, format_duration


@dataclass(frozen=True)
class Summary:
    """The search's verdict: the best trial, the baseline's, and the speedup between them."""

    best: dict[str, Any] | None
    """Fastest trial that reached the target (lowest TTA), or None if none did."""
    baseline: dict[str, Any] | None
    speedup: float | None
    """Baseline TTA / best TTA; when the baseline never reached the target, a lower bound
    computed from the baseline's training time (see ``speedup_is_lower_bound``)."""
    speedup_is_lower_bound: bool = False

    def speedup_text(self) -> str:
        if self.speedup is None:
            return "n/a"
        return f"{'>= ' if self.speedup_is_lower_bound else ''}{self.speedup:.2f}x"


def fold_reruns(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The search's own trials, each with its confirmation runs (``rerun_of``) folded in: a
    trial that was run again gets ``tta_runs`` (every seed's TTA, None where the target was
    not reached), ``tta_seeds``, ``tta_first`` (its first run's TTA), and ``tta_seconds``
    becomes the median over its runs (None if that median did not reach the target)."""
    runs: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("rerun_of") is not None and r.get("status") != objective.INTERRUPTED:
            runs.setdefault(r["rerun_of"], []).append(r)
    out = []
    for r in records:
        if r.get("rerun_of") is not None:
            continue
        extra = runs.get(r["trial"])
        if not extra or r.get("status") != objective.REACHED:
            out.append(r)
            continue
        group = [r, *extra]
        ttas = [x.get("tta_seconds") if x.get("status") == objective.REACHED else None
                for x in group]
        median = statistics.median([t if t is not None else math.inf for t in ttas])
        out.append({**r, "tta_first": r.get("tta_seconds"), "tta_runs": ttas,
                    "tta_seeds": [x.get("seed") for x in group],
                    "tta_seconds": median if math.isfinite(median) else None})
    return out


def summarize(records: list[dict[str, Any]]) -> Summary:
    """The best trial and the speedup over the baseline. Where confirmation runs were made,
    the winner is the confirmed recipe with the lowest median TTA, and the speedup compares
    medians."""
    folded = fold_reruns(records)
    reached = [r for r in folded if r.get("status") == objective.REACHED and r.get("tta_seconds")]
    confirmed = [r for r in reached if r.get("tta_runs")]
    pool = confirmed or reached
    best = min(pool, key=lambda r: r["tta_seconds"]) if pool else None
    baseline = next((r for r in folded if r.get("is_baseline")), None)
    speedup, lower = None, False
    if best is not None and baseline is not None:
        if baseline.get("status") == objective.REACHED and baseline.get("tta_seconds"):
            speedup = baseline["tta_seconds"] / best["tta_seconds"]
        elif baseline.get("status") == objective.NOT_REACHED and baseline.get("train_seconds"):
            speedup, lower = baseline["train_seconds"] / best["tta_seconds"], True
    return Summary(best=best, baseline=baseline, speedup=speedup, speedup_is_lower_bound=lower)


def best_so_far(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    return summarize(records).best


# -- progress lines -------------------------------------------------------------------------


def describe_recipe(recipe: dict[str, Any] | None) -> str:
    if not recipe:
        return "(invalid recipe)"
    from autotune.recipe import Recipe

    try:
        return Recipe.from_dict(recipe).describe()
    except Exception:  # noqa: BLE001 - a record from another version still prints
        return ", ".join(f"{k}={v}" for k, v in recipe.items())


def _counter(record: dict[str, Any], total: int) -> str:
    if record.get("rerun_of") is not None:
        return f"[{record['trial']:>3}: #{record['rerun_of']} seed {record.get('seed')}]"
    return f"[{record['trial']:>3}/{total}]"


def started_line(record: dict[str, Any], total: int) -> str:
    tag = " (baseline)" if record.get("is_baseline") else ""
    tag = " (warm start)" if record.get("warm_start") else tag
    return f"{_counter(record, total)} running{tag}: {describe_recipe(record.get('recipe'))}"


def confirming_line(info: dict[str, Any]) -> str:
    return (f"confirming: {info['recipes']} recipes (the fastest, and the baseline) run again "
            f"with {info['seeds']} more seeds each ({info['trials']} runs); the winner is the "
            "lowest median time-to-accuracy")


def finished_line(record: dict[str, Any], total: int, best: dict[str, Any] | None,
                  metric: str = "acc") -> str:
    """One line per finished trial: state, TTA (or why none), metric, peak memory, best so far."""
    status = record.get("status", "?")
    if status == objective.REACHED:
        what = f"TTA {format_duration(record.get('tta_seconds')):>7}"
    else:
        what = f"no TTA ({_why(record)})"
    best_metric = record.get("best_metric")
    metric_text = f"{metric} {best_metric:.3f}" if isinstance(best_metric, float) else f"{metric} -"
    best_text = (
        f"best {format_duration(best['tta_seconds'])} (#{best['trial']})" if best else "best -"
    )
    return (
        f"{_counter(record, total)} {status:<11} {what}  {metric_text}  "
        f"peak {format_bytes(record.get('peak_memory_bytes'))}  | {best_text}"
    )


def _why(record: dict[str, Any]) -> str:
    status = record.get("status")
    if status == objective.STOPPED:
        return f"stopped early at {format_duration(record.get('train_seconds'))}"
    if status == objective.NOT_REACHED:
        return f"target not reached in {format_duration(record.get('train_seconds'))}"
    message = (record.get("message") or status or "").strip()
    return message if len(message) <= 90 else message[:87] + "..."


def leaderboard(records: list[dict[str, Any]], limit: int = 10) -> str:
    """Trials ranked by score (reached first, fastest first), as an aligned text table; a
    recipe confirmed with more seeds ranks by its median TTA (``med/N``)."""
    folded = fold_reruns(records)

    def key(r: dict[str, Any]) -> tuple:
        if r.get("tta_runs"):  # confirmed recipes first, by median TTA
            return (0, r.get("tta_seconds") or float("inf"), r["trial"])
        return (1, r.get("score") or float("inf"), r["trial"])

    ranked = sorted(folded, key=key)
    rows = [("rank", "trial", "status", "TTA", "best acc", "peak mem", "recipe")]
    for rank, r in enumerate(ranked[:limit], 1):
        best_metric = r.get("best_metric")
        tta = format_duration(r.get("tta_seconds"))
        if r.get("tta_runs"):
            tta = f"{tta} med/{len(r['tta_runs'])}"
        rows.append((
            str(rank),
            f"#{r['trial']}{'*' if r.get('is_baseline') else ''}",
            str(r.get("status")),
            tta,
            f"{best_metric:.3f}" if isinstance(best_metric, float) else "-",
            format_bytes(r.get("peak_memory_bytes")),
            describe_recipe(r.get("recipe")),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1]
             for row in rows]
    note = "\n(* = baseline recipe"
    if any(r.get("tta_runs") for r in folded):
        note += "; med/N = median TTA over N seeds"
    return "\n".join(lines) + note + ")"


# -- files ----------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("autotune", "torch", "transformers", "ray", "optuna", "deepspeed"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def device_description(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(0)})"
    return f"cpu ({_cpu_model()}, {_cpu_count()} cores)"


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_recipe_document(summary: Summary, context: dict[str, Any]) -> dict[str, Any]:
    """The content of ``best_recipe.yaml``: the recipe first, then what was measured."""
    best = summary.best
    assert best is not None
    baseline = summary.baseline or {}
    return {
        "recipe": best["recipe"],
        "measured": {
            "tta_seconds": best["tta_seconds"],
            "peak_memory_bytes": best.get("peak_memory_bytes"),
            "peak_memory_source": best.get("peak_memory_source"),
            "best_metric": best.get("best_metric"),
            "steps": best.get("steps"),
            "trial": best["trial"],
            **({"tta_runs": best["tta_runs"], "tta_seeds": best["tta_seeds"],
                "tta_spread": _spread(best["tta_runs"]), "tta_is_median_of": len(best["tta_runs"])}
               if best.get("tta_runs") else {}),
            "device": context.get("device"),
        },
        "baseline": {
            "recipe": baseline.get("recipe"),
            "status": baseline.get("status"),
            "tta_seconds": baseline.get("tta_seconds"),
            **({"tta_runs": baseline["tta_runs"]} if baseline.get("tta_runs") else {}),
            "train_seconds": baseline.get("train_seconds"),
        },
        "speedup": None if summary.speedup is None else round(summary.speedup, 3),
        "speedup_is_lower_bound": summary.speedup_is_lower_bound,
        "task": context.get("task"),
        "search": context.get("search"),
        "versions": library_versions(),
    }


def _spread(ttas: list[float | None]) -> list[float | None]:
    """[fastest, slowest] TTA over the runs; None as the slowest when a run did not reach."""
    reached = [t for t in ttas if t is not None]
    if not reached:
        return [None, None]
    return [min(reached), max(reached) if len(reached) == len(ttas) else None]


def write_yaml(path: Path, data: dict[str, Any], header: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(data, sort_keys=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(header + text)
    tmp.replace(path)


# -- memory estimates -----------------------------------------------------------------------


def estimate_table(rows: list[dict[str, Any]], budget_bytes: int | None) -> str:
    """``autotune estimate``'s table: one line per recipe (``autotune.memory.estimate_recipes``
    rows) with its predicted peak per device, the parts of it, and whether it fits."""
    show_ckpt = any(r["recipe"].get("checkpointing") for r in rows)
    show_offload = any(r["recipe"].get("offload") for r in rows)
    header = ["precision", "batch", "parallelism", "workers"]
    header += ["ckpt"] * show_ckpt + ["offload"] * show_offload
    header += ["peak/device", "params", "grads", "optimizer", "activations", "fits"]
    table = [header]
    for row in rows:
        recipe = row["recipe"]
        cells = [recipe["precision"], str(recipe["batch_size"]), recipe["parallelism"],
                 str(recipe["workers"])]
        cells += ["yes" if recipe.get("checkpointing") else "no"] * show_ckpt
        cells += ["yes" if recipe.get("offload") else "no"] * show_offload
        p = row.get("prediction")
        if p is None:
            table.append([*cells, "-", "-", "-", "-", "-", f"n/a: {row['unsupported']}"])
            continue
        fits = "-" if budget_bytes is None else ("yes" if row["fits"] else "NO")
        table.append([*cells, *(format_bytes(p[k]) for k in (
            "peak_bytes", "parameters_bytes", "gradients_bytes", "optimizer_bytes",
            "activations_bytes")), fits])
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    numeric = set(range(len(header) - 6, len(header) - 1))
    lines = []
    for line in table:
        cells = [c.rjust(w) if i in numeric else c.ljust(w)
                 for i, (c, w) in enumerate(zip(line[:-1], widths))]
        lines.append("  ".join(cells) + "  " + line[-1])
    return "\n".join(lines)
