"""Any training loop as a search's task: a function ``fn(recipe, ctx)``, in the style of Ray
Tune's function trainables.

The function gets the recipe to apply (``autotune.configure(recipe, model)`` builds the
optimizer, schedule, autocast, pruning and step for a model) and a ``TrialContext``; autotune
owns the clock, the evaluation schedule, the stopping rule and the records
(``autotune.integrations._session``, the rules of autotune's own loop)::

    def train(recipe, ctx):
        model, loader = build()                       # setup: not on the clock
        run = autotune.configure(recipe, model)
        ctx.start()                                   # the training clock starts here
        while True:
            for batch in loader:                      # batch_size * accumulation_steps rows
                run.step(run.split(batch), loss_fn)
                if ctx.step(examples=len(batch[0])):  # True when an evaluation is due
                    with ctx.evaluating():            # not counted
                        acc = evaluate(run.model)
                    ctx.report(acc)                   # stops the function once decided

``ctx.report`` raises ``TrialStopped`` (a ``BaseException``, so ``except Exception`` lets it
through) when the trial is decided: target reached, time limit, or a non-finite metric; the
function need not return by itself. A function that returns, or raises, before that keeps
what it reported (not reached, or an error with the exception's message); one that never
reports is an error that says so. A Lightning ``LightningModule`` runs through the same API
(docs: the integration section of the README): a ``Callback`` calls ``ctx.step`` in
``on_train_batch_end`` and ``ctx.report`` in ``on_validation_end``.

A multi-worker recipe (``recipe.workers > 1``: ddp, fsdp, zero1-3, pipeline) runs the function
once in each of ``recipe.workers`` worker processes, as torchrun would start a script: the
process group is initialised (``torch.distributed.is_initialized()``, gloo on CPUs, NCCL on
GPUs; ``ctx.rank``, ``ctx.world_size``) and ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ... are
set. The function applies the parallelism itself (wrap the model in ``DistributedDataParallel``,
shard its data by ``ctx.rank``; ``autotune.configure`` applies single-device recipes only, so
configure ``recipe.replace(parallelism="single", workers=1)`` around the wrapped model). Every
worker must call ``ctx.step()`` after every optimizer step and ``ctx.report()`` at every
evaluation ``ctx.step()`` asked for, in the same order: worker 0's clock and metric decide for
all (``autotune.integrations._session``), and a worker that skipped a call would leave the
others waiting. ``examples`` is the worker's own count (the trial counts it for every worker).
An exception on one worker ends the trial as an error that names the worker and the message.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from autotune.errors import UserError
from autotune.integrations._session import Session, TrialStopped
from autotune.integrations._task import (
    OwnLoopTask,
    check_target,
    higher_is_better,
    own_loop_fields,
    worker_spec,
)
from autotune.knobs import unsupported_reason
from autotune.recipe import Recipe
from autotune.train import pick_device, seed_everything
from autotune.train.result import ReportFn, TrialLimits, TrialResult

__all__ = ["TrainFn", "TrialContext", "TrialStopped", "function_task", "resolve_callable"]


class TrialContext:
    """What a training function gets besides the recipe: the trial's settings and the clock.

    ``start()`` marks the end of setup (the clock restarts from 0; without it, the clock runs
    from the call of the function, setup included); ``step(examples)`` after each optimizer
    step returns True when an evaluation is due; ``with evaluating():`` around an evaluation
    keeps it off the clock; ``report(metric)`` records the measured metric."""

    def __init__(self, recipe: Recipe, session: Session, limits: TrialLimits) -> None:
        self.recipe = recipe
        """The recipe this trial applies."""
        self.seed = limits.seed
        """Seed the trial's weights and data order with it (torch's RNG is seeded already)."""
        self.device = session.device
        """Where to train: a GPU where the trial has one, else the CPU."""
        self.target = limits.target
        self.max_train_seconds = limits.max_train_seconds
        self.eval_every_seconds = limits.eval_every_seconds
        self.rank = session.rank
        """This worker's rank in a multi-worker trial (0 in one process)."""
        self.world_size = session.world
        """The trial's number of workers (1 in one process)."""
        self._session = session

    def start(self) -> None:
        """Training starts now (see the class docstring); only the first call counts."""
        self._session.start()

    def step(self, examples: int = 0) -> bool:
        """One optimizer step done, of ``examples`` training examples; True when the clock
        says to evaluate now (every ``eval_every_seconds`` of training, and at the limit)."""
        return self._session.step(examples)

    def evaluating(self) -> contextlib.AbstractContextManager[None]:
        """Context manager: the clock is paused inside; its wall time is ``eval_seconds``."""
        return self._session.evaluating()

    def report(self, metric: float | torch.Tensor) -> None:
        """The metric measured now (one finite number). Raises ``TrialStopped`` when this
        decides the trial; returns otherwise (train on)."""
        value = metric.item() if isinstance(metric, torch.Tensor) else metric
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"ctx.report takes one number (the metric), got "
                            f"{type(metric).__name__}")
        if self._session.record(float(value)):
            raise TrialStopped

    @property
    def elapsed(self) -> float:
        """Training seconds so far."""
        return self._session.elapsed()


TrainFn = Callable[[Recipe, TrialContext], Any]
"""A training function: ``fn(recipe, ctx)``; its return value is ignored."""


def resolve_callable(spec: str, what: str) -> Callable[..., Any]:
    """The callable named ``package.module:function``, imported now; ``UserError`` naming
    what is wrong (``what``: ``--trainer``, ``--function``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or ":" in attr:
        raise UserError(f"{what} {spec!r} is not of the form 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as exc:
        raise UserError(f"{what} {spec!r}: cannot import the module {module_name!r} ({exc}). "
                        "Check the spelling and that its folder is on PYTHONPATH (run from the "
                        "folder that contains it).") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise UserError(f"{what} {spec!r}: the module {module_name!r} has no function {attr!r}. "
                        f"Its public names are: {', '.join(public) or '(none)'}.")
    return fn


def function_task(
    fn: TrainFn | str, *, metric: str, target: float | None, direction: str | None = None,
    batch_size: int = 32, lr: float = 1e-3, max_train_seconds: float = 60.0,
    eval_every_seconds: float = 1.0, name: str | None = None, description: str = "",
    baseline: Recipe | None = None,
) -> OwnLoopTask:
    """A task trained by ``fn(recipe, ctx)`` (see the module docstring), whose ``metric`` must
    reach ``target`` in ``direction`` (``max`` or ``min``; default: from the metric's name).

    ``fn`` is a function or ``package.module:function`` (a search needs the name: its trial
    processes import it). The baseline is autotune's plain recipe at ``batch_size`` and
    ``lr`` (or ``baseline``). Each trial seeds torch with its seed, calls ``fn`` once (in each
    worker of a multi-worker recipe), and ends as the module docstring says."""
    spec = fn if isinstance(fn, str) else f"{fn.__module__}:{fn.__qualname__}"
    train_fn = resolve_callable(fn, "--function") if isinstance(fn, str) else fn
    shown = name or spec
    goal = check_target(metric, target, f"function {shown!r}")
    higher = higher_is_better(metric, direction)

    def runner(recipe: Recipe, limits: TrialLimits, report: ReportFn | None,
               device: str | None) -> TrialResult:
        return run_function(train_fn, spec, metric, recipe, limits, report, device)

    rebuilt = {"metric": metric, "target": goal, "direction": "max" if higher else "min",
               "batch_size": batch_size, "lr": lr, "max_train_seconds": max_train_seconds,
               "eval_every_seconds": eval_every_seconds, "name": name,
               "description": description}
    return OwnLoopTask(
        **own_loop_fields(shown, metric, higher, goal, max_train_seconds, eval_every_seconds),
        default_batch_size=batch_size, default_lr=lr,
        description=description or f"training function {spec}; {metric} reported by it",
        runner=runner, baseline=baseline, integration="function", refusal=unsupported_reason,
        load_spec=worker_spec("function", spec, fn, rebuilt))


def run_function(fn: TrainFn, spec: str, metric: str, recipe: Recipe, limits: TrialLimits,
                 report: ReportFn | None = None, device: str | None = None) -> TrialResult:
    """One trial of a training function (in a multi-worker trial: this worker's part of it):
    never raises for what the recipe or the function does (see
    ``autotune.integrations._session``), except ``WorkerFailed`` where the function raised
    on this worker alone."""
    dev = pick_device(device)
    session = Session(limits, report, dev, metric)
    reason = unsupported_reason(recipe, dev.type) or workers_reason(recipe, session.world)
    if reason:
        session.refuse(reason)
        return session.finish()
    seed_everything(limits.seed)
    session.begin()
    ctx = TrialContext(recipe, session, limits)
    with _stopped_quietly():
        try:
            fn(recipe, ctx)
        except Exception as exc:  # noqa: BLE001 - the user's code: any failure is recorded
            session.fail(exc, f"the training function {spec} raised ")
    session.end_undecided(
        f"the training function {spec} returned after {session.elapsed():.1f}s of training "
        f"without reporting {metric!r}: call ctx.report(value) after each evaluation (when "
        "ctx.step() returns True)")
    result = session.finish()
    session.leave_if_failed_alone()
    return result


def workers_reason(recipe: Recipe, world: int) -> str | None:
    """Why the recipe cannot run in this process's group of ``world`` workers (None when it
    can): a multi-worker recipe runs in as many worker processes, which
    ``autotune.train.run_trial`` starts."""
    if recipe.workers == world:
        return None
    return (f"the recipe has {recipe.parallelism} over {recipe.workers} workers and this "
            f"process is one of {world}; run it through autotune.train.run_trial (or a "
            "search), which starts one worker process each")


@contextlib.contextmanager
def _stopped_quietly() -> Iterator[None]:
    """``TrialStopped`` ends the user's function: the trial is decided."""
    try:
        yield
    except TrialStopped:
        pass
