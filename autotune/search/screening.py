"""Screening: the search's system configurations measured for speed before convergence trials.

Many knobs decide only how fast a step runs, not whether training converges: the *system
knobs* (``SYSTEM_KNOBS``: precision, the micro-batch ``batch_size``, checkpointing, compile,
the optimizer's implementation, memory formats, TF32, the DataLoader's knobs, the parallel
mode). A few seconds of timed steps per configuration (``autotune.train.screen``) say which
are fast; the convergence trials then search the optimisation knobs (learning rate, warmup,
schedule, optimizer, accumulation, clipping, pruning, ...) on those alone. On a task where
most recipes never reach the target within a trial, this turns random search among failing
recipes into a search over the recipes that can be fast.

The phase, in order:

1. **Configurations** (``system_configs``): every distinct combination of the space's system
   knobs' values, ``when:`` conditions honoured, each with the baseline's other knobs. A
   system knob whose condition refers to an optimisation knob is left to the convergence
   trials. Above ``MAX_CONFIGS``, a spread sample (``spread_sample``): the baseline's
   configuration, then greedily the one bringing the most values not yet sampled, and the
   farthest (most knobs different) from those picked; ``search.yaml`` says it sampled.
2. **Memory gate first**: a configuration predicted over the budget is recorded ``refused``
   and never run.
3. **Measurement** where trials run (``autotune.search._screener``: Ray tasks with a trial's
   resources, one per GPU on a GPU cluster, never in the driver), within
   ``SCREEN_SHARE`` of the time budget; what is left when it is spent is recorded ``cut``.
   Each measurement is told the fastest speed measured before it started: one whose warm-up
   step runs under ``ABANDON_SHARE`` of that stops at once, ``slow`` (``abandon_floor``).
4. **Decision** (``decide``, pure on the records): a configuration that failed (out of
   memory or over the budget, unsupported, an error, refused, cut, slow) is dropped. Among those
   measured, one is *dominated* when another with the same micro-batch (the same examples per
   step, so the same learning per example) is at least as fast and needs no more memory,
   one of them strictly: it is dropped. Micro-batches are not compared with each other: a
   smaller batch moves fewer examples per second but takes more optimizer steps per example,
   and often reaches a target on fewer examples, which only convergence trials can tell. So
   the fastest configuration of each micro-batch size is kept (``KEEP_PER_BATCH``), at most
   ``KEEP_TOP`` in all, fastest first, except one under ``MIN_SPEED_SHARE`` of the fastest's
   examples per second: to win it would need that many times fewer examples to reach the
   target, which no system knob buys (fp16 on a CPU without fp16 arithmetic runs at 1/18 of
   bf16's speed, and kept it cost three of a search's trials). Keeping the overall fastest
   instead kept only the largest micro-batches on a small CNN (256, 128, 64: the most
   examples per second), and the accumulation steps the trials search can only make the
   effective batch larger, so the oracle's best, batch 32, was out of reach. The baseline's
   configuration is always
   kept (every search measures the baseline first). A multi-worker configuration, not
   screened, is kept when its single-device counterpart is (its per-device speed is that
   one's), or when the space has no single-device configuration.
5. **Restricted space** (``restricted_plan``): the system knobs become one categorical
   ``system`` over the kept configurations (``SearchSpace.systems``), and the warm start
   gains each kept configuration with the baseline's optimisation knobs, the learning rate
   following the batch (``autotune.warm_start.LR_BATCH_EXPONENT``) with the warmup of a raised
   learning rate (``autotune.warm_start.WARMUP_STEPS``).

Every measurement is in ``screening.jsonl`` (``autotune.results.ScreenRecord``); a resumed
search measures only configurations without a record, so a finished screening is reused as
it was. Pure: no Ray, Optuna or torch here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autotune.errors import ConfigError
from autotune.recipe import Recipe
from autotune.results import CUT, REFUSED, ScreenRecord
from autotune.search.plan import SearchPlan
from autotune.space import SearchSpace
from autotune.warm_start import (
    LR_BATCH_EXPONENT,
    WARMUP_STEPS,
    WarmStart,
    describe_change,
    snap_to_space,
)

SYSTEM_KNOBS = (
    "precision", "batch_size", "checkpointing", "compile", "fused_optimizer",
    "channels_last", "tf32", "dataloader_workers", "pin_memory", "prefetch_factor",
    "persistent_workers", "parallelism", "workers", "offload", "pipeline_microbatches",
    "pipeline_schedule",
)
"""Knobs that change how fast a step runs, not what it computes (up to rounding): screened.
``batch_size`` is the micro-batch; the effective batch is searched by the convergence trials
through ``accumulation_steps``, with the learning rate."""
MAX_CONFIGS = 24
"""Configurations screened at most; more are sampled (``spread_sample``)."""
KEEP_PER_BATCH = 1
"""Fastest non-dominated configurations kept for each micro-batch size (plus the
baseline's)..."""
KEEP_TOP = 4
"""...and at most this many in all, the fastest first."""
MIN_SPEED_SHARE = 0.25
"""A configuration slower than this share of the fastest's examples per second is dropped."""
ABANDON_SHARE = MIN_SPEED_SHARE / 2
"""A measurement whose warm-up step runs under this share of the fastest configuration
measured so far stops there, ``slow`` (``abandon_floor``; ``autotune.train.screen``): half of
``MIN_SPEED_SHARE``, because a first step pays one-time costs a steady step does not (compile
aside: torch's count is left out). On this CPU a first step took 1.0-1.2x a timed one (bert,
2026-12-05: fp16 1.57 s against 1.38 s), so a configuration stopped here would have been
dropped for ``MIN_SPEED_SHARE`` after its full measurement."""
SECONDS_PER_CONFIG = (1.0, 3.0)
"""Timed seconds per configuration, least and most (``seconds_per_config``)."""
MEASURED_SHARE = 0.4
"""Of screening's time per configuration, the share given to timed steps: the rest is its
setup, warm-up and the task's start in a fresh process."""
_PARALLEL_KNOBS = ("parallelism", "workers", "offload", "pipeline_microbatches",
                   "pipeline_schedule")


@dataclass(frozen=True)
class SystemConfig:
    """One combination of the system knobs' values, and its recipe."""

    label: str
    """Unique within a search: ``knob=value`` for each of its knobs (the ``system`` choice)."""
    values: dict[str, Any]
    recipe: Recipe
    """The baseline with these values."""
    is_baseline: bool = False


@dataclass(frozen=True)
class Decision:
    """What screening decided for one configuration, and why."""

    label: str
    kept: bool
    reason: str
    rank: int | None = None
    """Place by throughput among the configurations measured (1: fastest)."""


# -- the configurations ---------------------------------------------------------------------


def system_knob_names(space: SearchSpace) -> list[str]:
    """The space's system knobs that screening enumerates, in file order: those in
    ``SYSTEM_KNOBS`` every definition of which has conditions only on other such knobs (a
    knob conditioned on an optimisation knob is left to the convergence trials)."""
    names = [k.knob for k in space.knobs if k.knob in SYSTEM_KNOBS]
    names = list(dict.fromkeys(names))
    changed = True
    while changed:  # drop knobs conditioned on a knob that is not (or no longer) screened
        changed = False
        for name in list(names):
            if any(other not in names for k in space.knobs if k.knob == name
                   for other, _ in k.when):
                names.remove(name)
                changed = True
    return names


def screens(plan: SearchPlan, configs: Sequence[SystemConfig] | None = None) -> bool:
    """Whether ``plan``'s search screens before its convergence trials: not refused
    (``--no-screen``, a search over a user's own loop) and two or more system configurations
    to choose from (``configs``: the plan's, when already built)."""
    if plan.request.screen is False:
        return False
    if configs is None:
        configs = system_configs(plan.space, plan.baseline, plan.workers_per_trial)
    return len(configs) >= 2


def system_configs(space: SearchSpace, baseline: Recipe, workers_per_trial: int
                   ) -> list[SystemConfig]:
    """Every valid combination of the system knobs' values (conditions honoured; for a range,
    its bounds and the powers of two between them), the baseline's first. A combination that
    is not a valid recipe is left out."""
    names = system_knob_names(space)
    points: list[dict[str, Any]] = [{}]
    for knob in space.knobs:
        if knob.knob not in names:
            continue
        grown = []
        for point in points:
            if not knob.applies({**baseline.to_dict(), **point}):
                grown.append(point)
                continue
            values = knob.choices if knob.choices is not None else _range_values(knob)
            grown += [{**point, knob.knob: value} for value in values]
        points = grown
    base_values = {n: getattr(baseline, n) for n in names}
    out: list[SystemConfig] = []
    seen: set[Recipe] = set()
    for point in points:
        recipe = _recipe(baseline, point, workers_per_trial)
        if recipe is None or recipe in seen:
            continue
        seen.add(recipe)
        is_base = all(getattr(recipe, n) == v for n, v in base_values.items())
        out.append(SystemConfig(config_label(point), point, recipe, is_base))
    out.sort(key=lambda c: not c.is_baseline)
    return out


def config_label(values: Mapping[str, Any]) -> str:
    """A configuration's name: ``precision=bf16,batch_size=64`` (every knob, in order)."""
    return ",".join(f"{k}={v}" for k, v in values.items())


def spread_sample(configs: Sequence[SystemConfig], limit: int = MAX_CONFIGS
                  ) -> list[SystemConfig]:
    """At most ``limit`` configurations spread over the values: the first (the baseline's),
    then repeatedly the one that brings the most knob values not yet picked, and among those
    the one farthest from every picked one (its fewest differing knobs to any; ties: the
    earlier in enumeration order). Every value of every knob is in the sample once ``limit``
    reaches the most values one knob has."""
    if len(configs) <= limit:
        return list(configs)
    picked = [configs[0]]
    covered = set(configs[0].values.items())
    distance = [_hamming(c.values, configs[0].values) for c in configs]
    while len(picked) < limit:
        best = max(range(len(configs)), key=lambda i: (
            len(set(configs[i].values.items()) - covered), distance[i], -i))
        if distance[best] == 0:
            break
        picked.append(configs[best])
        covered |= set(configs[best].values.items())
        distance = [min(d, _hamming(c.values, configs[best].values))
                    for d, c in zip(distance, configs)]
    return picked


def abandon_floor(records: Sequence[ScreenRecord]) -> float | None:
    """Examples per second under which a measurement stops after a warm-up step
    (``ABANDON_SHARE`` of the fastest measured so far); None before any was measured."""
    speeds = [r.examples_per_second for r in records
              if r.status == "ok" and r.examples_per_second]
    return ABANDON_SHARE * max(speeds) if speeds else None


def seconds_per_config(share_s: float | None, configs: int) -> float:
    """Timed seconds for each of ``configs`` measurements in ``share_s`` seconds of time
    budget (``MEASURED_SHARE`` of an even split, within ``SECONDS_PER_CONFIG``)."""
    low, high = SECONDS_PER_CONFIG
    if share_s is None or configs == 0:
        return high
    return max(low, min(high, MEASURED_SHARE * share_s / configs))


# -- the decision ---------------------------------------------------------------------------


def decide(records: Sequence[ScreenRecord], keep_top: int = KEEP_TOP,
           keep_per_batch: int = KEEP_PER_BATCH) -> list[Decision]:
    """Kept or dropped, and why, for each record (see the module docstring), in the order of
    the ranking: kept first, fastest first."""
    ok = [r for r in records if r.status == "ok" and r.examples_per_second]
    ranked = sorted(ok, key=lambda r: (-(r.examples_per_second or 0.0), r.order))
    rank = {r.label: i for i, r in enumerate(ranked, 1)}
    reasons: dict[str, tuple[bool, str]] = {}
    front = []
    for r in ranked:
        winner = next((o for o in ranked if _dominates(o, r)), None)
        if winner is not None:
            reasons[r.label] = (False, f"dominated by #{rank[winner.label]}: the same "
                                "micro-batch, at least as fast, no more memory")
        else:
            front.append(r)
    best = front[0].examples_per_second if front else None
    per_batch: dict[Any, int] = {}
    kept_count = 0
    for r in front:
        speed = f"{r.examples_per_second:.0f} examples/s"
        batch = r.config.get("batch_size")
        if best and (r.examples_per_second or 0.0) < MIN_SPEED_SHARE * best:
            reasons[r.label] = (False, f"{speed}, under {MIN_SPEED_SHARE:.0%} of the "
                                f"fastest's {best:.0f}")
        elif per_batch.get(batch, 0) >= keep_per_batch:
            reasons[r.label] = (False, f"{speed}, slower than the configuration kept for "
                                f"micro-batch {batch}")
        elif kept_count >= keep_top:
            reasons[r.label] = (False, f"{speed}, slower than the {keep_top} kept (the "
                                f"fastest: {best:.0f})")
        else:
            per_batch[batch] = per_batch.get(batch, 0) + 1
            kept_count += 1
            reasons[r.label] = (True, f"#{rank[r.label]} by throughput, {speed}, the fastest "
                                f"at micro-batch {batch}")
    single_kept = {_counterpart(r.config) for r in records
                   if r.label in reasons and reasons[r.label][0]}
    any_single = any(not _is_parallel(r) for r in records)
    for r in records:
        if r.label in reasons:
            continue
        if r.status == "not_screened":
            keep = not any_single or _counterpart(r.config) in single_kept
            why = "its single-device configuration was kept" if any_single else \
                "no single-device configuration to compare with"
            reasons[r.label] = (keep, f"not screened (multi-worker): {why}" if keep else
                                "not screened (multi-worker), and its single-device "
                                "configuration was not kept")
        else:
            reasons[r.label] = (False, _failure(r))
    out = []
    for r in records:
        kept, why = reasons[r.label]
        if r.is_baseline and not kept:
            kept, why = True, f"the baseline's configuration, kept as the reference; else {why}"
        out.append(Decision(r.label, kept, why, rank.get(r.label)))
    return sorted(out, key=lambda d: (not d.kept, d.rank or len(out) + 1))


def _dominates(a: ScreenRecord, b: ScreenRecord) -> bool:
    if a is b or a.config.get("batch_size") != b.config.get("batch_size"):
        return False
    fa, fb = a.examples_per_second or 0.0, b.examples_per_second or 0.0
    ma, mb = a.peak_memory_bytes or 0, b.peak_memory_bytes or 0
    return fa >= fb and ma <= mb and (fa > fb or ma < mb)


def _failure(r: ScreenRecord) -> str:
    what = {REFUSED: "refused by the memory gate (predicted over the budget), not run",
            CUT: "not measured: screening's share of the time budget was spent"}
    return what.get(r.status) or f"{r.status}: {r.message}".rstrip(": ")


def _is_parallel(r: ScreenRecord) -> bool:
    return (r.recipe or {}).get("workers", 1) > 1


def _counterpart(config: Mapping[str, Any]) -> str:
    """The configuration's values without its parallel mode (a single-device equivalent)."""
    return config_label({k: v for k, v in config.items() if k not in _PARALLEL_KNOBS})


# -- the convergence search's space and warm start ------------------------------------------


def restricted_plan(plan: SearchPlan, configs: Sequence[SystemConfig],
                    decisions: Sequence[Decision]) -> SearchPlan:
    """``plan`` for the convergence trials: its space with the system knobs replaced by a
    choice among the kept configurations (the baseline's included), and its warm start led by
    each kept configuration (``kept_warm_starts``), then the rules' recipes still inside. With
    ``--no-warm-start`` the kept configurations only restrict the space: Optuna alone proposes
    after the baseline, as that flag promises."""
    by_label = {c.label: c for c in configs}
    kept = [by_label[d.label] for d in decisions if d.kept and d.label in by_label]
    if not kept:
        return plan
    names = system_knob_names(plan.space)
    space = plan.space.restrict_to_systems(names, [(c.label, c.values) for c in kept])
    warm = [*kept_warm_starts(plan, kept, space), *plan.suggestions] \
        if plan.request.warm_start else []
    suggestions: list[WarmStart] = []
    for ws in warm:
        try:
            space.point_for(ws.recipe)
        except ConfigError:
            continue  # its system configuration was not kept
        if ws.recipe != plan.baseline and all(ws.recipe != s.recipe for s in suggestions):
            suggestions.append(ws)
    return dataclasses.replace(plan, space=space, suggestions=tuple(suggestions))


def kept_warm_starts(plan: SearchPlan, kept: Sequence[SystemConfig],
                     space: SearchSpace) -> list[WarmStart]:
    """For each kept configuration but the baseline's, in ranking order: the baseline with
    it, the learning rate ``x (effective batch ratio) ** LR_BATCH_EXPONENT`` where the batch
    differs, with ``WARMUP_STEPS`` of warmup where the learning rate rises (the
    larger-batch rule of ``autotune.warm_start``), moved into the full space's ranges."""
    base = plan.baseline
    exponent = LR_BATCH_EXPONENT[base.optimizer]
    out = []
    for config in kept:
        if config.is_baseline:
            continue
        recipe = config.recipe
        ratio = (recipe.batch_size * recipe.accumulation_steps) / \
            (base.batch_size * base.accumulation_steps)
        changes: dict[str, Any] = {}
        if ratio != 1:
            changes["lr"] = base.lr * ratio**exponent
            if ratio > 1:
                changes["warmup_steps"] = max(base.warmup_steps, WARMUP_STEPS)
        try:
            recipe = recipe.replace(**changes)
        except ConfigError:
            continue
        ws = WarmStart(f"screened: {describe_change(base, recipe) or config.label}",
                       "a system configuration that screening kept (fast steps, measured), "
                       "with the baseline's optimisation knobs; the learning rate follows "
                       "the batch by the square-root (Adam) or linear (SGD) rule, with warmup "
                       "when it rises", recipe, base, exponent if ratio != 1 else None)
        snapped = snap_to_space(ws, plan.space) if changes else ws
        if snapped is not None and snapped.recipe.batch_size == config.recipe.batch_size:
            out.append(dataclasses.replace(snapped, name=f"screened: "
                                           f"{describe_change(base, snapped.recipe)}"))
    return out


def screening_document(records: Sequence[ScreenRecord], sampled_from: int | None = None
                       ) -> dict[str, Any] | None:
    """``search.yaml``'s ``screening`` section: each configuration with its measurement and
    the decision; None when nothing was screened."""
    if not records:
        return None
    by_label = {r.label: r for r in records}
    rows = []
    for d in decide(records):
        r = by_label[d.label]
        rows.append({"configuration": r.config, "status": r.status,
                     "examples_per_second": _round(r.examples_per_second, 1),
                     "mean_examples_per_second": _round(r.mean_examples_per_second, 1),
                     "step_seconds": _round(r.step_seconds, 5),
                     "peak_memory_bytes": r.peak_memory_bytes,
                     "compile_seconds": _round(r.compile_seconds, 2) or None,
                     "rank": d.rank, "kept": d.kept, "why": d.reason})
    doc: dict[str, Any] = {"configurations": len(records),
                           "kept": sum(row["kept"] for row in rows), "results": rows}
    if sampled_from is not None and sampled_from > len(records):
        doc["sampled_from"] = sampled_from
    return doc


def search_screening(plan: SearchPlan) -> dict[str, Any] | None:
    """``screening_document`` of the plan's run directory (the plan of the whole space)."""
    records = plan.run_dir.screen_records()
    if not records:
        return None
    total = len(system_configs(plan.space, plan.baseline, plan.workers_per_trial))
    return screening_document(records, sampled_from=total)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _recipe(baseline: Recipe, values: Mapping[str, Any], workers: int) -> Recipe | None:
    values = dict(values)
    if values.get("parallelism", baseline.parallelism) != "single" and "workers" not in values:
        values["workers"] = workers
    try:
        return baseline.replace(**values)
    except ConfigError:
        return None


def _range_values(knob: Any) -> tuple[Any, ...]:
    """A system knob given as a range: its bounds and, for integers, the powers of two
    between them (worker counts, prefetch depths)."""
    values = {knob.low, knob.high}
    if knob.kind is int:
        power = 1
        while power < knob.high:
            if power > knob.low:
                values.add(power)
            power *= 2
    return tuple(sorted(knob.kind(v) for v in values))


def _hamming(a: Mapping[str, Any], b: Mapping[str, Any]) -> int:
    return sum(a.get(k) != b.get(k) for k in set(a) | set(b))
