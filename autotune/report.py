"""What a user reads: progress lines, the plan, a leaderboard, the verdict, the estimate table.

Pure formatting of typed records (``autotune.results.TrialRecord``) and the search's verdict
(``autotune.search.winner``); no training, no files, no printing (the CLI prints).
"""

from __future__ import annotations

from typing import Any

from autotune import objective
from autotune.memory import NOT_MEASURED
from autotune.recipe import Recipe
from autotune.results import ScreenRecord, TrialRecord
from autotune.search import SearchOutcome, SearchPlan
from autotune.search.progress import Snapshot
from autotune.search.reporting._data import NOT_MEASURED_TEXT
from autotune.search.screening import screens
from autotune.search.winner import Candidate, candidates
from autotune.units import format_bytes, format_duration
from autotune.warm_start import describe_change

# -- progress lines -------------------------------------------------------------------------


def describe_recipe(recipe: dict[str, Any] | None) -> str:
    if not recipe:
        return "(invalid recipe)"
    try:
        return Recipe.from_dict(recipe).describe()
    except Exception:  # noqa: BLE001 - a record from another version still prints
        return ", ".join(f"{k}={v}" for k, v in recipe.items())


def _counter(record: TrialRecord, total: int) -> str:
    if record.rerun_of is not None:
        return f"[{record.trial:>3}: #{record.rerun_of} seed {record.seed}]"
    return f"[{record.trial:>3}/{total}]"


def started_line(record: TrialRecord, total: int) -> str:
    tag = " (baseline)" if record.is_baseline else ""
    if record.warm_start:
        tag = f" (warm start: {record.warm_start_name})" if record.warm_start_name \
            else " (warm start)"
    return f"{_counter(record, total)} running{tag}: {describe_recipe(record.recipe)}"


def resources_line(info: dict[str, Any]) -> str:
    """How the search lays its trials out on the cluster: what one trial holds, how many run
    at once, the cluster's size (the ``resources`` event of ``autotune.search._run``)."""
    held = " and ".join(f"{v:g} {k.upper()}" for k, v in sorted(info["per_trial"].items(),
                                                               reverse=True) if v)
    c = info["cluster"]
    simulated = "; GPUs simulated, trials train on the CPU" if info.get("simulated_gpus") else ""
    return (f"resources: up to {info['concurrent']} trials at once, each holding {held} "
            f"(multi-worker trials: --placement {info['placement']}); cluster: {c['nodes']} "
            f"node(s), {c['GPU']:g} GPU, {c['CPU']:g} CPU{simulated}")


def confirming_line(info: dict[str, Any]) -> str:
    """The confirmation phase's start, and what the time budget cut from it."""
    if not info["trials"]:
        return (f"confirming: none of the {info.get('planned', 0)} confirmation runs fits in "
                f"the {format_duration(info.get('seconds_left') or 0.0)} of time budget left; "
                "the winner is the fastest single trial (--time-budget longer to confirm)")
    cut = info.get("cut_for_time", 0)
    left = (f"; {cut} of {info['planned']} runs cut to keep the time budget "
            f"({format_duration(info.get('seconds_left') or 0.0)} left)") if cut else ""
    return (f"confirming: {info['recipes']} recipes (the fastest, and the baseline) run again "
            f"with up to {info['seeds']} more seeds each ({info['trials']} runs){left}; the "
            "winner is the lowest median time-to-target")


def screening_line(info: dict[str, Any]) -> str:
    """Screening's start: how many system configurations, how long each."""
    sampled = f" (a spread sample of {info['sampled_from']})" \
        if info["sampled_from"] > info["configs"] else ""
    reused = info["configs"] - info["to_measure"]
    again = f"; {reused} measured by the earlier run" if reused else ""
    within = f", within {format_duration(info['time_s'])}" if info.get("time_s") is not None \
        else ""
    return (f"screening {info['configs']} system configurations{sampled}: "
            f"{info['seconds_each']:.1f}s of timed steps each{within}{again}")


def _config_name(record: ScreenRecord, baseline: dict[str, Any] | None) -> str:
    """A screened configuration as its change from the baseline's (``baseline``)."""
    if record.is_baseline:
        return "baseline"
    try:
        return describe_change(Recipe.from_dict(baseline or {}), Recipe.from_dict(
            record.recipe or {})) or record.label
    except Exception:  # noqa: BLE001 - a record from another version still prints
        return record.label


def screened_line(record: ScreenRecord) -> str:
    """One screened configuration: its speed and peak memory, or why none."""
    name = "baseline" if record.is_baseline else record.label
    if record.status != "ok":
        why = f" ({record.message})" if record.message else ""
        return f"  screened {name}: {record.status}{why}"
    compile_text = f", compile {format_duration(record.compile_seconds)}" \
        if record.compile_seconds else ""
    return (f"  screened {name}: {record.examples_per_second:.0f} examples/s, step "
            f"{(record.step_seconds or 0.0) * 1000:.1f} ms, peak "
            f"{format_bytes(record.peak_memory_bytes)}{compile_text}")


def screening_table(records: list[ScreenRecord], decisions: list[Any],
                    warm_start: list[str] | None = None) -> str:
    """The screening's ranking: each configuration's speed, memory, and whether it was kept
    for the convergence trials (and why); then the warm start on the kept ones."""
    by_label = {r.label: r for r in records}
    base = next((r.recipe for r in records if r.is_baseline), None)
    rows = [("rank", "kept", "examples/s", "step", "peak mem", "configuration (why)")]
    for d in decisions:
        r = by_label[d.label]
        speed = f"{r.examples_per_second:.0f}" if r.examples_per_second else "-"
        step = f"{r.step_seconds * 1000:.1f} ms" if r.step_seconds else "-"
        rows.append((str(d.rank or "-"), "yes" if d.kept else "no", speed, step,
                     format_bytes(r.peak_memory_bytes), f"{_config_name(r, base)} ({d.reason})"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    kept = sum(d.kept for d in decisions)
    lines = [f"screening kept {kept} of {len(decisions)} system configurations for the "
             "convergence trials:"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1]
              for row in rows]
    if warm_start is not None:
        lines.append(f"warm start after the baseline: {'; '.join(warm_start) or 'none'}")
    return "\n".join(lines)


def finished_line(record: TrialRecord, total: int, best: Candidate | None,
                  metric: str = "acc") -> str:
    """One line per finished trial: state, TTA (or why none), metric, peak memory, best so far;
    then what it paid once: compiling (part of its TTA), the loader's start (not part)."""
    if record.status == objective.REACHED:
        what = f"TTA {format_duration(record.tta_seconds):>7}"
    else:
        what = f"no TTA ({_why(record)})"
    metric_text = f"{metric} {record.best_metric:.3f}" if isinstance(record.best_metric, float) \
        else f"{metric} -"
    best_text = f"best {format_duration(best.tta_seconds)} (#{best.record.trial})" if best \
        else "best -"
    extra = ""
    if record.compile_seconds:  # part of the TTA: the clock runs while torch compiles
        extra += f"  compile {format_duration(record.compile_seconds)}"
    if record.loader_start_seconds and record.loader_start_seconds >= 0.05:
        extra += f"  loader start {format_duration(record.loader_start_seconds)}"
    if record.inactive_knobs:
        extra += f"  (no effect: {', '.join(n.split(':')[0] for n in record.inactive_knobs)})"
    return (f"{_counter(record, total)} {record.status:<11} {what}  {metric_text}  "
            f"peak {format_bytes(record.peak_memory_bytes)}{extra}  | {best_text}")


def status_line(snap: Snapshot, metric: str = "acc") -> str:
    """The live status of a search, one line: trials done of the total (and confirmation runs),
    time used of the budget and left, an estimate of the end, the best so far, and each
    running trial's training seconds of its limit and latest metric."""
    counter = f"[{snap.done}/{snap.total} done"
    if snap.confirming is not None:
        counter += f", confirming {snap.confirmed}/{snap.confirming}"
    parts = [counter + "]"]
    clock = format_duration(snap.elapsed_s)
    if snap.time_budget_s is not None:
        clock += f" of {format_duration(snap.time_budget_s)} ({format_duration(snap.remaining_s)}" \
                 " left)"
    parts.append(clock)
    parts.append(f"ETA ~{format_duration(snap.eta_s)}" if snap.eta_s is not None else "ETA ?")
    line = ", ".join(parts)
    best = snap.best
    line += f" | best {format_duration(best.tta_seconds)} (#{best.record.trial})" if best \
        else " | best -"
    running = []
    for record, progress in snap.running:
        name = f"#{record.rerun_of} seed {record.seed}" if record.rerun_of is not None \
            else f"#{record.trial}"
        if progress is None:
            running.append(f"{name} starting")
            continue
        value = f" {metric} {progress.last_metric:.3f}" \
            if isinstance(progress.last_metric, float) else ""
        running.append(f"{name} {progress.train_seconds:.1f}/"
                       f"{format_duration(progress.max_train_seconds)}{value}")
    if running:
        line += " | running " + "; ".join(running)
    return line


def _why(record: TrialRecord) -> str:
    if record.status == objective.STOPPED:
        if "time budget" in (record.message or ""):
            return f"stopped at {format_duration(record.train_seconds)}: time budget spent"
        return f"stopped early at {format_duration(record.train_seconds)}"
    if record.status == objective.NOT_REACHED:
        return f"target not reached in {format_duration(record.train_seconds)}"
    message = (record.message or record.status).strip()
    return message if len(message) <= 90 else message[:87] + "..."


def plan_lines(plan: SearchPlan) -> list[str]:
    """What the search is about to do, before its first trial."""
    r = plan.request
    budget = f"{r.budget_bytes:,} bytes ({format_bytes(r.budget_bytes)})" if r.budget_bytes \
        else "none"
    time_budget = format_duration(plan.time_budget_s) if plan.time_budget_s is not None \
        else "none"
    lines = [
        f"task {r.model}: {plan.task.description}",
        f"target {plan.task.metric} {objective.comparison(plan.task.higher_is_better)} "
        f"{plan.target}; trial limit "
        f"{format_duration(plan.max_train_seconds)} of training; device {plan.device_type}; "
        f"memory budget {budget}",
        f"space {plan.space_source}: {plan.space.size_hint()}",
    ]
    if plan.default_space:
        lines += [f"  no space ships for {r.model}: the default space, saved as "
                  f"{plan.run_dir.space_path} (edit a copy and pass it with --space):",
                  *("  | " + line for line in plan.space_text.splitlines())]
    warm = "; ".join(ws.name for ws in plan.suggestions) or "none"
    if screens(plan):  # the rules are applied again to the configurations screening keeps
        warm = "chosen after screening (the general rules on the fastest configurations kept)"
    lines += [f"warm start after the baseline: {warm}",
              f"up to {r.trials} trials, "
              + (f"ends within {time_budget}" if plan.time_budget_s is not None
                 else "no time budget") + "; results in "
              f"{plan.run_dir.path}/"]
    return lines


def resumed_line(info: dict[str, Any], run_dir: Any) -> str:
    left = info["time_left_s"]
    return (f"resuming the search in {run_dir}: {info['finished']} of {info['trials']} trials "
            f"finished; {format_duration(left) if left is not None else 'no'} time budget left")


def verdict_lines(outcome: SearchOutcome) -> list[str]:
    """The winner, its time-to-target (median over seeds), the baseline's, and the speedup."""
    summary = outcome.summary
    best = summary.best
    if best is None:
        return []
    task, target = outcome.plan.task, outcome.plan.target
    metric = f"{task.metric} {objective.comparison(task.higher_is_better)}"
    runs = ""
    if best.confirmed:
        shown = ", ".join("-" if t is None else f"{t:.1f}" for t in best.tta_runs)
        runs = f" (median of {len(best.runs)} seeds: {shown})"
    base = summary.baseline
    base_text = "not run"
    if base is not None:
        base_text = f"{base.tta_seconds:.1f}s" if base.tta_seconds else \
            f"not reached ({base.record.status})"
        if base.tta_seconds and base.confirmed:
            base_text += f" (median of {len(base.runs)})"
    assert best.tta_seconds is not None
    return [
        f"best recipe (trial #{best.record.trial}): {describe_recipe(best.record.recipe)}",
        f"  time-to-target {best.tta_seconds:.1f}s{runs} to {metric} {target}, peak memory "
        f"{_memory_text(best.record)}",
        f"  baseline time-to-target {base_text}; speedup {summary.speedup_text()}",
        f"wrote {outcome.best_recipe_path}",
    ]


def _memory_text(record: TrialRecord) -> str:
    """A trial's peak memory, or why there is none: a CPU search without a memory budget does
    not measure it (``autotune.train.TrialLimits.track_memory``)."""
    if record.peak_memory_bytes is None and record.peak_memory_source == NOT_MEASURED:
        return NOT_MEASURED_TEXT
    return format_bytes(record.peak_memory_bytes)


def leaderboard(records: list[TrialRecord], limit: int = 10) -> str:
    """Trials ranked by score (reached first, fastest first), as an aligned text table; a
    recipe confirmed with more seeds ranks by its median TTA (``med/N``)."""
    pool = candidates(records)

    def key(c: Candidate) -> tuple:
        if c.confirmed:  # confirmed recipes first, by median TTA
            return (0, c.tta_seconds or float("inf"), c.record.trial)
        return (1, c.record.score if c.record.score is not None else float("inf"),
                c.record.trial)

    rows = [("rank", "trial", "status", "TTA", "best metric", "peak mem", "recipe")]
    for rank, c in enumerate(sorted(pool, key=key)[:limit], 1):
        r = c.record
        tta = format_duration(c.tta_seconds)
        if c.confirmed:
            tta = f"{tta} med/{len(c.runs)}"
        rows.append((str(rank), f"#{r.trial}{'*' if r.is_baseline else ''}", r.status, tta,
                     f"{r.best_metric:.3f}" if isinstance(r.best_metric, float) else "-",
                     format_bytes(r.peak_memory_bytes), describe_recipe(r.recipe)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1]
             for row in rows]
    note = "\n(* = baseline recipe"
    if any(c.confirmed for c in pool):
        note += "; med/N = median TTA over N seeds"
    return "\n".join(lines) + note + ")"


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
