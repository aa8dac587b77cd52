"""The search as one Python call: ``search(SearchRequest(...)) -> SearchOutcome``.

The CLI, the benchmarks and users' code all call this. It owns the whole search: checking the
request and every path it will write before the first trial, loading the task and the space,
resuming (the saved settings, the stored Optuna study, the time already spent), the run
directory's lock, interruption (Ctrl-C, and SIGTERM, which ``autotune.search._ray`` turns into
the same: the running trials are recorded, ``SearchInterrupted`` names the resume command),
the trials and confirmation runs on Ray Tune, the winner, the no-winner
diagnosis, and the files. It prints nothing: progress reaches ``on_event`` as
``(kind, payload)``:

- ``("plan", SearchPlan)`` before the first trial; ``("resumed", dict)`` on a resumed search;
- ``("started", TrialRecord)`` and ``("finished", TrialRecord)`` as trials start and end;
- ``("progress", TrialProgress)`` with each intermediate result of a running trial
  (``autotune.search.progress``, which also follows these events into a status line's state);
- ``("confirming", dict)`` before the confirmation runs; ``("warning", str)``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autotune import objective
from autotune.default_space import default_space_yaml
from autotune.errors import UserError
from autotune.hardware import bf16_is_fast
from autotune.integrations import OwnLoopTask, load_any_task
from autotune.recipe import Recipe, baseline_recipe
from autotune.results import RunDirectory, TrialRecord, check_writable
from autotune.search.documents import best_recipe_document, search_document
from autotune.search.plan import SearchPlan
from autotune.search.reporting import CSV_FILE, REPORT_FILE, write_report_after_search
from autotune.search.screening import search_screening
from autotune.search.settings import SearchRequest
from autotune.search.tracking import (
    SearchResults,
    TrackingContext,
    open_tracker,
    require_installed,
)
from autotune.search.winner import Summary, confirm_points, no_winner_reason, summarize
from autotune.space import SearchSpace, load_space, parse_space, shipped_space_path
from autotune.tasks import Task, check_teacher, dry_run
from autotune.warm_start import WarmStart, describe_change, snap_all_to_space, warm_starts

EventFn = Callable[[str, Any], None]


@dataclass(frozen=True)
class SearchOutcome:
    """What a finished search measured and decided."""

    plan: SearchPlan
    records: list[TrialRecord]
    """Every trial's record, earlier runs of a resumed search included, in the order they
    ended (interrupted trials left out)."""
    summary: Summary
    """The winner (median over seeds where confirmed), the baseline and the speedup."""
    wall_seconds: float
    """Wall time of this run of the search."""
    best_recipe_path: Path | None
    """``best_recipe.yaml`` (or ``--output``); None when no trial reached the target."""
    no_winner: str | None = None
    """Why there is no winner and what to change, when there is none."""
    report_path: Path | None = None
    """``report.html``, when it was written."""

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir.path


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended the search; what was measured is in the run directory."""

    def __init__(self, run_dir: Path, finished: int) -> None:
        super().__init__(f"search interrupted; {finished} trials finished")
        self.run_dir = run_dir
        self.finished = finished

    @property
    def resume_command(self) -> str:
        return f"autotune search --resume {self.run_dir}"


def check_ray_available() -> None:
    """Raise ``UserError`` naming the install command when Ray Tune or Optuna is missing."""
    missing = []
    for module in ("ray.tune", "optuna"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(f"the search needs {', '.join(missing)}, which is not installed; run: "
                        "pip install 'ray[tune]' optuna")


def search(request: SearchRequest, on_event: EventFn | None = None,
           given: dict[str, Any] | None = None) -> SearchOutcome:
    """Run the search ``request`` describes (see the module docstring). With
    ``request.resume``, the saved request of that directory is used, with the resumable
    settings in ``given`` (name -> value) changed."""
    emit = on_event or (lambda kind, payload: None)
    request.check()
    run_dir, request, resumed = _resolve_request(request, given or {})
    check_ray_available()
    require_installed(request.loggers)
    plan = make_plan(request, run_dir, resumed)
    with run_dir.locked():
        if not resumed:
            run_dir.save_settings(request.to_json(), plan.space_text)
        prior = [r for r in run_dir.records(lambda w: emit("warning", w))
                 if r.status != objective.INTERRUPTED]
        if resumed:
            plan = _with_time_left(plan, run_dir, prior, given or {})
            emit("resumed", {"finished": sum(r.is_search_trial for r in prior),
                             "trials": request.trials, "time_left_s": plan.time_budget_s,
                             "run_dir": run_dir.path, "records": prior})
        emit("plan", plan)
        return _run_and_write(plan, prior, emit)


def _resolve_request(request: SearchRequest, given: dict[str, Any]
                     ) -> tuple[RunDirectory, SearchRequest, bool]:
    if request.resume:
        run_dir = RunDirectory(request.resume)
        request = request.resumed(run_dir.load_settings(), given)
        return run_dir, request, True
    path = Path(request.results_dir) if request.results_dir else Path("autotune_runs") / (
        f"{_safe(request.model)}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = RunDirectory(path)
    if run_dir.exists():
        raise UserError(f"{path} already holds a search; continue it with "
                        f"--resume {path}, or choose another --results-dir")
    return run_dir, request.replace(results_dir=str(path)), False


def make_plan(request: SearchRequest, run_dir: RunDirectory, resumed: bool) -> SearchPlan:
    """Resolve ``request``: check every path, load the task (and dry-run it), the space (or
    generate the default one) and the warm start, fill the defaults."""
    output = Path(request.output) if request.output else run_dir.best_path
    check_writable(run_dir.path, "--results-dir", is_dir=True)
    check_writable(output, "--output", is_dir=False)
    if request.storage and "://" not in request.storage:
        check_writable(Path(request.storage), "--storage", is_dir=True)
    device = request.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # The trials build the task from the same options (a Trainer's or function's own).
    request = request.replace(task_options=request.integration_options())
    task = load_any_task(request.model, device, request.task_options, check=True)
    own_loop = isinstance(task, OwnLoopTask)
    baseline = Recipe.from_dict(request.baseline) if request.baseline else \
        task.baseline if own_loop and task.baseline else \
        baseline_recipe(task.default_batch_size, task.default_lr)
    if own_loop:
        request = _own_loop_request(request)
    else:
        dry_run(task, baseline.batch_size, device)  # a broken task stops here, not per trial
    fast = bf16_is_fast(device)
    space, source, text, generated = _load_space(request, run_dir, resumed, baseline, device,
                                                 fast, task.is_dataset, task.teacher is not None)
    if _may_distil(space, baseline):  # no teacher: stop here; else build it once, now
        check_teacher(task, baseline.batch_size, device)
    return SearchPlan(
        request=request, task=task, space=space, space_source=source, baseline=baseline,
        target=task.target if request.target is None else request.target,
        max_train_seconds=request.max_trial_seconds or task.max_train_seconds,
        time_budget_s=request.time_budget_s,
        workers_per_trial=_workers_per_trial(request, space, device), run_dir=run_dir,
        output=output, device_type=device,
        suggestions=_warm_start(request, task, baseline, space, device, fast),
        space_text=text, default_space=generated,
    )


def _own_loop_request(request: SearchRequest) -> SearchRequest:
    """A Trainer's or function's search: no screening (it times autotune's own training step,
    and the user's loop is not autotune's); ``UserError`` when ``--screen`` asks for it."""
    if request.screen:
        raise UserError(f"--screen times autotune's own training step of a task's model; a "
                        f"--{request.integration} search trains in your own loop, so it cannot "
                        "screen: drop --screen")
    return request.replace(screen=False)


def _may_distil(space: SearchSpace, baseline: Recipe) -> bool:
    """Whether a recipe of this search can have ``distill_weight`` > 0."""
    if baseline.distill_weight > 0:
        return True
    for knob in space.knobs:
        if knob.knob == "distill_weight" and (
                any(v > 0 for v in knob.choices or ()) or (knob.high or 0) > 0):
            return True
    return False


def _load_space(request: SearchRequest, run_dir: RunDirectory, resumed: bool,
                baseline: Recipe, device: str, bf16_fast: bool, dataset: bool,
                teacher: bool = False) -> tuple[SearchSpace, str, str, bool]:
    """``(space, source, text, generated)``: the saved copy on resume, ``--space``, the space
    shipped for the task, or else the default space generated from the task's baseline."""
    if resumed:
        path = run_dir.space_path
    elif request.space:
        path = Path(request.space)
    else:
        path = shipped_space_path(request.model)
        if not path.exists():
            text = default_space_yaml(baseline, device, bf16_fast=bf16_fast,
                                      source=request.model, dataset=dataset, teacher=teacher,
                                      cpus=os.cpu_count() or 1)
            if request.integration != "task":  # the header's command names the Trainer/function
                text = text.replace(f"autotune search --model {request.model} ",
                                    f"autotune search {_task_flags(request)} ", 1)
            source = f"default space for {request.model} (generated from its baseline)"
            return parse_space(text, source=source), source, text, True
    space = load_space(path)
    return space, str(path), path.read_text(), False


def _warm_start(request: SearchRequest, task: Task, baseline: Recipe, space: SearchSpace,
                device: str, bf16_fast: bool) -> tuple[WarmStart, ...]:
    """The general rules' recipes (``autotune.warm_start``), after the task's own suggestions
    where asked for, moved into the space."""
    found: list[WarmStart] = []
    if request.task_warm_start:
        for changes in task.suggested_recipes:
            try:
                recipe = baseline.replace(**changes)
            except UserError:
                continue  # a suggestion this recipe format cannot hold is not tried
            found.append(WarmStart(f"the task's: {describe_change(baseline, recipe)}",
                                   "suggested by the task itself", recipe, baseline))
    if request.warm_start:
        found += warm_starts(baseline, device, bf16_fast=bf16_fast)
    return tuple(snap_all_to_space(found, space))


def _workers_per_trial(request: SearchRequest, space: Any, device: str) -> int:
    if request.workers_per_trial is not None:
        return request.workers_per_trial
    if device == "cuda":
        return max(1, torch.cuda.device_count())
    parallel = [k for k in space.knobs if k.knob == "parallelism" and k.choices
                and any(c != "single" for c in k.choices)]
    return 2 if parallel else 1


def _with_time_left(plan: SearchPlan, run_dir: RunDirectory, prior: list[TrialRecord],
                    given: dict[str, Any]) -> SearchPlan:
    """A resumed search's time budget counts its earlier runs, unless a new budget is given."""
    budget = plan.time_budget_s
    if budget is None or "time_budget_s" in given:
        return plan
    left = max(0.0, budget - run_dir.spent_seconds(prior))
    return dataclasses.replace(plan, time_budget_s=left)


def _run_and_write(plan: SearchPlan, prior: list[TrialRecord], emit: EventFn) -> SearchOutcome:
    """Run the trials (lazily importing the Ray side), then write the documents."""
    from autotune.search import _run  # lazy: Ray Tune and Optuna are heavy optional imports

    run_dir = plan.run_dir
    start = time.time()
    # search.yaml now too (rewritten at the end): a report of a running search reads the
    # task's metric, target and direction from it
    run_dir.write_yaml(run_dir.path / "search.yaml", search_document(plan, len(prior), 0.0))
    run_dir.begin_session()
    tracker = open_tracker(plan.request.loggers, _tracking_context(plan), emit,
                           plan.request.verbose)
    new: list[TrialRecord] = []
    confirmation: dict[str, Any] | None = None
    try:
        if not _nothing_left(plan, prior):
            new, done = _run.run(plan, emit, prior, start, on_record=tracker.on_record)
            confirmation = done.to_dict()
    except KeyboardInterrupt:
        run_dir.end_session()
        tracker.close(interrupted=True)
        finished = [r for r in run_dir.records() if r.status != objective.INTERRUPTED]
        raise SearchInterrupted(run_dir.path, len(finished) - len(prior)) from None
    except BaseException:
        run_dir.end_session()  # what was measured stays in trials.jsonl; resume continues it
        tracker.close(interrupted=True)
        raise
    run_dir.end_session()
    records = prior + new
    wall = time.time() - start
    summary = summarize(records)
    context = search_document(plan, len(records), wall, confirmation,
                              search_screening(plan))
    run_dir.write_yaml(run_dir.path / "search.yaml", context)
    failed: list[str] = []
    write_report_after_search(  # report.html, trials.csv; never raises
        run_dir.path, lambda kind, payload: (failed.append(payload), emit(kind, payload)))
    report = None if failed else run_dir.path / REPORT_FILE
    outcome = SearchOutcome(plan, records, summary, wall, None, report_path=report)
    if summary.best is None:
        outcome = dataclasses.replace(outcome, no_winner=no_winner_reason(
            records, plan.task.metric, plan.target, str(run_dir.trials_path),
            plan.task.higher_is_better))
    else:
        r = plan.request
        header = (f"# Best recipe found by: autotune search {_task_flags(r)} --seed {r.seed}"
                  f"{' --budget ' + str(r.budget_bytes) + 'B' if r.budget_bytes else ''}\n"
                  f"# Apply it: {_apply_hint(r, plan.output)}\n")
        run_dir.write_yaml(plan.output, best_recipe_document(summary, context), header)
        outcome = dataclasses.replace(outcome, best_recipe_path=plan.output)
    tracker.finish(_search_results(outcome))
    return outcome


def _task_flags(r: SearchRequest) -> str:
    """The flags that name the search's task, for the best recipe's header."""
    if r.integration == "task":
        return f"--model {r.model}"
    return (f"--{r.integration} {r.model} --metric {r.metric} --target {r.target:g}"
            + (f" --direction {r.direction}" if r.direction else ""))


def _apply_hint(r: SearchRequest, output: Path) -> str:
    """How to use the winner, for the best recipe's header."""
    if r.integration == "trainer":
        return (f"autotune export {output} --format hf (TrainingArguments keyword arguments "
                "for your Trainer)")
    if r.integration == "function":
        return f"your function, with autotune.Recipe.load('{output}')"
    return f"autotune train --recipe {output} --model {r.model}"


def _tracking_context(plan: SearchPlan) -> TrackingContext:
    r = plan.request
    return TrackingContext(
        run_dir=plan.run_dir.path, metric=plan.task.metric, model=r.model,
        mlflow_uri=r.mlflow_uri,
        settings={"model": r.model, "seed": r.seed, "budget_bytes": r.budget_bytes,
                  "target": plan.target, "metric": plan.task.metric, "trials": r.trials,
                  "time_budget_s": plan.time_budget_s, "device": plan.device_type,
                  "max_train_seconds": plan.max_train_seconds, "space": plan.space_source})


def _search_results(outcome: SearchOutcome) -> SearchResults:
    """What the loggers get at the end: the winner and the files written."""
    best = outcome.summary.best
    files = [outcome.report_path, outcome.best_recipe_path, outcome.run_dir / "search.yaml",
             outcome.run_dir / CSV_FILE if outcome.report_path else None]
    return SearchResults(
        best=best.record if best else None, best_tta_seconds=best.tta_seconds if best else None,
        speedup=outcome.summary.speedup,
        artefacts=tuple(p for p in files if p is not None and p.exists()))


def _nothing_left(plan: SearchPlan, prior: list[TrialRecord]) -> bool:
    """A resumed search whose trials and confirmation runs are all done."""
    r = plan.request
    searched = sum(x.is_search_trial for x in prior)
    return searched >= r.trials and not confirm_points(
        prior, r.confirm_top, r.confirm_seeds, r.seed, plan.max_train_seconds)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
