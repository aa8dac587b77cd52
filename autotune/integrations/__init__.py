"""Tune the training a user already has: a Hugging Face ``Trainer`` (``hf_trainer``), or any
training function ``fn(recipe, ctx)`` (``function``), as a search's task.

Each is an ``OwnLoopTask`` (``_task``): a ``Task`` the search, its Ray trials, the records, the
winner and the report take as they take any task, whose trials run in the user's own loop
(``autotune.train.run_trial`` hands them to it) under autotune's clock and records
(``_session``). ``hf_args`` is the one recipe -> ``TrainingArguments`` mapping, shared with
``autotune export --format hf``; ``accelerate`` the recipe as an Accelerate config.

``load_any_task`` is how the search builds a task from its request: a built-in or
``package.module:function`` task, or, with the option ``INTEGRATION_KEY``, a Trainer factory or
training function named ``package.module:function``. ``own_loop_task`` is how a worker of a
multi-worker trial rebuilds one (the ``load_spec`` of an own-loop task names it: each worker
process builds the task by name, as for any task). ``hf_trainer`` imports transformers'
``Trainer``, so it is imported only when a Trainer task is built (a lazy import for a heavy
dependency).
"""

from __future__ import annotations

import inspect
from typing import Any

from autotune.errors import UserError
from autotune.integrations._session import TrialStopped
from autotune.integrations._task import INTEGRATION_KEY, OwnLoopTask, higher_is_better
from autotune.integrations.function import TrainFn, TrialContext, function_task
from autotune.tasks import Task, load_task

__all__ = [
    "INTEGRATIONS",
    "INTEGRATION_KEY",
    "OwnLoopTask",
    "TrainFn",
    "TrialContext",
    "TrialStopped",
    "function_task",
    "higher_is_better",
    "load_any_task",
    "own_loop_task",
    "trainer_task",
]

INTEGRATIONS = ("task", "trainer", "function")
"""What a search's ``model`` names: an autotune task (built-in or ``pkg.mod:fn`` returning a
``Task``), a Trainer factory (``--trainer``), or a training function (``--function``)."""


def trainer_task(*args: Any, **kwargs: Any) -> OwnLoopTask:
    """``autotune.integrations.hf_trainer.trainer_task`` (see there)."""
    return _hf_trainer().trainer_task(*args, **kwargs)


def _hf_trainer() -> Any:
    """The ``hf_trainer`` module, imported on first use: it imports transformers' ``Trainer``
    (about 3 s), which a task or function search never needs."""
    from autotune.integrations import hf_trainer  # lazy: transformers' Trainer, ~3 s

    return hf_trainer


def load_any_task(name: str, device: str = "cpu", options: dict[str, Any] | None = None, *,
                  check: bool = False) -> Task:
    """The task ``name`` with ``options``: ``autotune.tasks.load_task``'s, or, when
    ``options[INTEGRATION_KEY]`` is ``trainer`` or ``function``, the ``OwnLoopTask`` of that
    factory or function, built with the other options as keyword arguments. ``check``: probe
    it (build the Trainer and evaluate it once: the search's driver does, its trials not).
    ``UserError`` for an unknown integration or option."""
    options = dict(options or {})
    kind = options.pop(INTEGRATION_KEY, "task")
    if kind == "task":
        return load_task(name, device, options)
    if kind == "trainer":
        build = _hf_trainer().trainer_task
        _check_options(kind, name, build, options)
        return build(name, device=device, probe=check, **options)
    if kind == "function":
        _check_options(kind, name, function_task, options)
        return function_task(name, **options)
    raise UserError(f"unknown integration {kind!r}; one of {', '.join(INTEGRATIONS)}")


def own_loop_task(device: str = "cpu", *, integration: str, spec: str,
                  options: dict[str, Any]) -> Task:
    """The own-loop task of the Trainer factory or training function ``spec`` in a worker
    process of a multi-worker trial (``autotune.tasks.load_task`` calls it by the name in the
    task's ``load_spec``), built without the probe, which the search's driver ran."""
    if integration == "trainer":
        return trainer_task(spec, device=device, probe=False, **options)
    if integration == "function":
        return function_task(spec, **options)
    raise UserError(f"unknown integration {integration!r}; one of trainer, function")


def _check_options(kind: str, name: str, builder: Any, options: dict[str, Any]) -> None:
    """``UserError`` naming the options ``builder`` does not take, and those it does."""
    params = inspect.signature(builder).parameters
    accepted = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY
                and p not in ("device", "probe", "name")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UserError(f"{kind} {name!r}: unknown option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(unknown)}; accepted (--task-option KEY=VALUE): "
                        f"{', '.join(accepted)}")
