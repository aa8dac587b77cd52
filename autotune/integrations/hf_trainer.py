"""A Hugging Face ``Trainer`` as a search's task: ``autotune search --trainer pkg.mod:make_trainer
--metric eval_accuracy --target 0.8``.

The user's factory takes the ``TrainingArguments`` autotune builds for a recipe and returns their
``Trainer`` (model, datasets, collator and ``compute_metrics`` are theirs)::

    def make_trainer(args: TrainingArguments) -> Trainer:
        return Trainer(model=build_model(), args=args, train_dataset=train,
                       eval_dataset=validation, compute_metrics=accuracy)

Each recipe becomes ``TrainingArguments`` through ``autotune.integrations.hf_args``, the mapping
``autotune export --format hf`` writes out (precision, per-device batch, accumulation, learning
rate, warmup and schedule, optimizer, clipping, DataLoader workers and pinning,
``torch_compile``), plus what a trial sets itself: a training length longer than any trial
(``max_steps``; the schedule does not depend on it), no saving, no logging integrations, and no
evaluation strategy: ``TimeToTarget``, a ``TrainerCallback``, asks for each evaluation on the
training clock's schedule (``control.should_evaluate``), keeps it off the clock, records the
metric from ``on_evaluate`` and stops training at the target or the time limit
(``control.should_training_stop``). The clock's rules are autotune's own loop's
(``autotune.integrations._session``).

Before the first trial the search builds the Trainer once from the baseline's arguments and
evaluates the untrained model (``trainer_task(..., probe=True)``): a factory that does not
return a ``Trainer``, or does not pass the arguments on, a metric the evaluation does not report
(the message lists those it does), and a target the untrained model already meets in the
metric's direction are user errors, before anything is searched. The baseline is the user's own
``TrainingArguments`` (``baseline_args``) as a recipe (``recipe_from_training_arguments``), or
the arguments' defaults.

A multi-worker recipe (ddp, fsdp, zero1-3) runs the factory's Trainer in each worker as
torchrun would (``autotune.train.distributed.worker_main``: the process group initialised,
``RANK``, ``WORLD_SIZE``, ... set), so the Trainer sees a distributed run (``args.world_size``)
and, through Accelerate, wraps the model itself: DDP, FSDP2 (``fsdp_config`` of
``hf_args``), or DeepSpeed with the ZeRO config ``trainer_arguments`` writes to the trial's
folder. The recipe's batch is per device; a step covers batch x accumulation x workers
examples. Worker 0's clock and metric decide for every worker (``_session``). Pipeline
parallelism has no ``TrainingArguments``, and Accelerate runs FSDP on accelerators only: both
are refused where they cannot run (``trainer_refusal``), and a Trainer that would not train
the recipe's parallelism (``unapplied_parallelism``) is refused rather than trained. The default
space searches single-device recipes only; a space with ``parallelism`` choices searches the
others.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import Dataset
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import logging as hf_logging

from autotune.errors import UserError
from autotune.integrations._session import Session, TrialStopped
from autotune.integrations._task import (
    NO_DATA,
    OwnLoopTask,
    check_target,
    higher_is_better,
    own_loop_fields,
    worker_spec,
)
from autotune.integrations.function import resolve_callable, workers_reason
from autotune.integrations.hf_args import hf_training_arguments, hf_unsupported
from autotune.knobs import deepspeed_config, unsupported_reason
from autotune.recipe import ZERO_MODES, Recipe
from autotune.train import pick_device, seed_everything
from autotune.train.result import ReportFn, TrialLimits, TrialResult

__all__ = ["TimeToTarget", "recipe_from_training_arguments", "trainer_arguments",
           "trainer_task"]

TrainerFactory = Callable[[TrainingArguments], Trainer]

NO_END_STEPS = 10**9
"""``max_steps`` of a trial's arguments: longer than any trial, which the callback ends."""

TRIAL_SETTINGS: dict[str, Any] = {
    "eval_strategy": "no", "save_strategy": "no", "logging_strategy": "no",
    "report_to": "none", "disable_tqdm": True, "max_steps": NO_END_STEPS,
}
"""What a trial sets besides the recipe: the callback decides when to evaluate and when to
stop; nothing is saved or sent to a logging service."""


def trainer_arguments(recipe: Recipe, output_dir: str | Path, device_type: str, *,
                      seed: int = 0, eval_batch_size: int | None = None) -> TrainingArguments:
    """The ``TrainingArguments`` of a trial of ``recipe``: ``hf_training_arguments`` (the
    export's mapping) and ``TRIAL_SETTINGS``, seeded with ``seed``. A ZeRO recipe's DeepSpeed
    config (``deepspeed_config``, the schedule left to the Trainer, as the export writes it)
    is written to ``output_dir``."""
    ds_path = None
    if recipe.parallelism in ZERO_MODES:
        ds_path = str(Path(output_dir) / "ds_config.json")
        Path(ds_path).write_text(json.dumps(deepspeed_config(
            recipe, device_type=device_type, with_scheduler=False)))
    kwargs = hf_training_arguments(recipe, device_type=device_type,
                                   deepspeed_config_path=ds_path)
    kwargs.update(TRIAL_SETTINGS, output_dir=str(output_dir), seed=seed, data_seed=seed)
    if eval_batch_size:
        kwargs["per_device_eval_batch_size"] = eval_batch_size
    return TrainingArguments(**kwargs)


# -- the callback ---------------------------------------------------------------------------


class MetricMissing(Exception):
    """The Trainer's evaluation did not report the metric a trial measures time-to-target
    with; the trial ends as an error naming the metrics it did report."""


class TimeToTarget(TrainerCallback):
    """Owns a Trainer trial's clock (see the module docstring): evaluations on the training
    clock's schedule and off it, the metric recorded, training stopped when decided."""

    def __init__(self, session: Session, metric: str, examples_per_step: int) -> None:
        self.session = session
        self.metric = metric
        self.examples_per_step = examples_per_step
        self._asked_at: float | None = None

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any,
                       **kwargs: Any) -> None:
        self.session.start()

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any,
                    **kwargs: Any) -> None:
        try:
            due = self.session.step(self.examples_per_step)
        except TrialStopped:
            control.should_training_stop = True
            return
        if due:
            self.session.pause()
            self._asked_at = time.perf_counter()
            control.should_evaluate = True

    def on_evaluate(self, args: TrainingArguments, state: Any, control: Any,
                    metrics: Mapping[str, float] | None = None, **kwargs: Any) -> None:
        if self._asked_at is None:
            return  # an evaluation the user's own code ran, not on the schedule
        self.session.add_eval_seconds(time.perf_counter() - self._asked_at)
        self._asked_at = None
        metrics = dict(metrics or {})
        if self.metric not in metrics:  # alike on every worker: all stop here
            self.session.fail(MetricMissing(missing_metric(self.metric, metrics)),
                              raised=False)
            control.should_training_stop = True
            return
        if self.session.record(_number(metrics[self.metric])):
            control.should_training_stop = True
        else:
            self.session.resume()


def _number(value: Any) -> float:
    value = value.item() if isinstance(value, torch.Tensor) else value
    return float(value) if isinstance(value, (int, float)) else math.nan


def missing_metric(metric: str, metrics: Mapping[str, Any]) -> str:
    """The message for a metric the Trainer's evaluation did not report, listing those it
    did."""
    shown = ", ".join(sorted(metrics)) or "(none)"
    return (f"the Trainer's evaluation reported {shown}, not {metric!r}. Name one of those "
            "with --metric, or return it from compute_metrics (the Trainer prefixes its names "
            "with eval_: 'accuracy' is reported as 'eval_accuracy')")


# -- one trial ------------------------------------------------------------------------------


def run_trainer(factory: TrainerFactory, spec: str, metric: str, recipe: Recipe,
                limits: TrialLimits, report: ReportFn | None = None, device: str | None = None,
                eval_batch_size: int | None = None) -> TrialResult:
    """One trial: the factory's Trainer trained with ``recipe``'s arguments under a
    ``TimeToTarget`` callback (in a multi-worker trial: this worker's Trainer, which sees the
    process group). Never raises for what the recipe or the user's code does, except
    ``WorkerFailed`` where the user's code raised on this worker alone."""
    dev = pick_device(device)
    session = Session(limits, report, dev, metric)
    session.result.inactive_knobs = hf_unsupported(recipe)
    reason = trainer_refusal(recipe, dev.type) or workers_reason(recipe, session.world)
    if reason:
        session.refuse(reason)
        return session.finish()
    seed_everything(limits.seed)
    session.begin()
    with trainer_output_dir() as out:
        try:
            args = trainer_arguments(recipe, out, dev.type, seed=limits.seed,
                                     eval_batch_size=eval_batch_size)
            trainer = quiet(checked_trainer(factory(args), spec, args))
            # Per worker: the session counts every worker's (x workers, as args.world_size).
            per_step = recipe.batch_size * recipe.accumulation_steps
            trainer.add_callback(TimeToTarget(session, metric, per_step))
            unapplied = unapplied_parallelism(recipe, trainer)
            if unapplied:  # alike on every worker, before any collective: all stop here
                session.refuse(unapplied)
            else:
                with warnings.catch_warnings():
                    # The recipe's schedule sets its decay steps; HF notes that max_steps is
                    # then not what ends it, which is the point.
                    warnings.filterwarnings("ignore", message="Both num_training_steps and "
                                            "num_stable_steps")
                    trainer.train()
        except TrialStopped:
            pass
        except Exception as exc:  # noqa: BLE001 - the user's code: any failure is recorded
            session.fail(exc, "the Trainer raised ")
    session.end_undecided(
        "the Trainer's training ended before its first evaluation (did a callback of yours "
        "stop it, or is its train_dataset empty?)")
    result = session.finish()
    session.leave_if_failed_alone()
    return result


TRAINER_DIR_PREFIX = "autotune-trainer-"


def trainer_output_dir() -> tempfile.TemporaryDirectory[str]:
    """The Trainer's ``output_dir`` for one trial: a temporary directory named with this
    process's id (``autotune-trainer-<pid>-...``). A trial process that Ray kills (a stopped or
    timed-out trial) never cleans its own up, so those of processes no longer alive on this
    machine are removed first."""
    root = Path(tempfile.gettempdir())
    pattern = re.compile(re.escape(TRAINER_DIR_PREFIX) + r"(\d+)-")
    for path in root.glob(f"{TRAINER_DIR_PREFIX}*"):
        match = pattern.match(path.name)
        if match and path.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{TRAINER_DIR_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists here (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and is not ours to signal
        pass
    return True


def trainer_refusal(recipe: Recipe, device_type: str) -> str | None:
    """Why a Trainer trial cannot run ``recipe`` on ``device_type`` (None when it can): the
    device's own limits (``unsupported_reason``), and pipeline parallelism, which
    ``TrainingArguments`` do not have (the Trainer would train data-parallel copies
    instead)."""
    if recipe.parallelism == "pipeline":
        return ("the Trainer has no pipeline parallelism (TrainingArguments cannot express "
                "it; under torchrun it would train data-parallel copies instead): search "
                "single, ddp, fsdp or zero1-3")
    if recipe.parallelism == "fsdp" and device_type == "cpu":
        return FSDP_ON_CPU
    return unsupported_reason(recipe, device_type)


FSDP_ON_CPU = (
    "the Trainer runs FSDP through Accelerate, which enables it only for accelerator process "
    "groups (MULTI_GPU, ...); on a CPU (MULTI_CPU) it ignores the FSDP settings and the "
    "Trainer would train DDP copies instead: search ddp or zero1-3 on a CPU")
"""Why an fsdp recipe is refused for a Trainer on a CPU (accelerate 1.15)."""


def unapplied_parallelism(recipe: Recipe, trainer: Trainer) -> str | None:
    """Why the built Trainer would not train ``recipe``'s parallelism (None when it would):
    another number of processes than the recipe's workers, fsdp or ZeRO not enabled in its
    Accelerator (a combination Accelerate ignores would train something else under the
    recipe's name)."""
    args = trainer.args
    if args.world_size != recipe.workers:
        return (f"the Trainer sees {args.world_size} process(es), the recipe has "
                f"{recipe.workers} workers")
    if recipe.parallelism == "fsdp" and not getattr(trainer, "is_fsdp_enabled", False):
        return FSDP_ON_CPU if args.use_cpu else (
            "the Trainer's Accelerator did not enable FSDP for the recipe's fsdp_config")
    if recipe.parallelism in ZERO_MODES and not getattr(trainer, "is_deepspeed_enabled", False):
        return "the Trainer's Accelerator did not enable DeepSpeed for the recipe's ZeRO config"
    return None


def quiet(trainer: Trainer) -> Trainer:
    """``trainer`` without the callbacks that print each evaluation's metrics or draw progress
    bars: a search prints its own lines."""
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    return trainer


def checked_trainer(trainer: Any, spec: str, args: TrainingArguments) -> Trainer:
    """The factory's result, or ``UserError``: not a ``Trainer``, or one that does not train
    with the arguments it was given, or without the data a trial needs."""
    if not isinstance(trainer, Trainer):
        raise UserError(
            f"--trainer {spec!r} returned {type(trainer).__name__}, not a transformers.Trainer. "
            "The factory takes the TrainingArguments autotune builds and returns "
            "Trainer(model=..., args=args, train_dataset=..., eval_dataset=..., "
            "compute_metrics=...)")
    if trainer.args is not args:
        raise UserError(
            f"--trainer {spec!r} built its Trainer with TrainingArguments of its own; pass on the "
            "ones it is given (Trainer(..., args=args)): they carry the recipe being tried")
    missing = [n for n in ("train_dataset", "eval_dataset") if getattr(trainer, n) is None]
    if missing:
        raise UserError(f"--trainer {spec!r}: the Trainer has no {' and no '.join(missing)}; "
                        "a trial trains on the one and measures the metric on the other")
    return trainer


# -- the task -------------------------------------------------------------------------------


def trainer_task(
    factory: TrainerFactory | str, *, metric: str, target: float | None,
    direction: str | None = None, baseline_args: Mapping[str, Any] | TrainingArguments | str |
    None = None, max_train_seconds: float = 60.0, eval_every_seconds: float = 2.0,
    eval_batch_size: int | None = 256, device: str = "cpu", probe: bool = True,
    name: str | None = None,
) -> OwnLoopTask:
    """The task of a Trainer factory (see the module docstring): its ``metric`` (as the
    Trainer's evaluation names it, ``eval_accuracy``) must reach ``target`` in ``direction``
    (``max``/``min``; default: from the name). ``baseline_args``: the user's own
    ``TrainingArguments`` (an object, its keyword arguments, or a YAML/JSON file of them) for
    the baseline. ``probe`` builds the Trainer once and evaluates the untrained model to
    check the factory, the metric and the target (a search does, in its driver; its trial
    processes do not)."""
    spec = factory if isinstance(factory, str) else f"{factory.__module__}:{factory.__qualname__}"
    make = resolve_callable(factory, "--trainer") if isinstance(factory, str) else factory
    shown = name or spec
    goal = check_target(metric, target, f"--trainer {shown!r}")
    higher = higher_is_better(metric, direction)
    baseline = recipe_from_training_arguments(_arguments_of(baseline_args))
    fields = own_loop_fields(shown, metric, higher, goal, max_train_seconds, eval_every_seconds)
    if eval_batch_size:
        fields["eval_batch_size"] = eval_batch_size  # what the memory trace evaluates
    description = f"Hugging Face Trainer from {spec}; {metric} from its evaluation"
    if probe:
        probed = _probe(make, spec, metric, goal, higher, direction, baseline, device,
                        eval_batch_size)
        metric = probed.pop("metric")
        fields.update(probed, metric=metric)
        description += f" ({fields.pop('about')})"

    def runner(recipe: Recipe, limits: TrialLimits, report: ReportFn | None,
               dev: str | None) -> TrialResult:
        return run_trainer(make, spec, metric, recipe, limits, report, dev, eval_batch_size)

    # What a worker of a multi-worker trial rebuilds the task from: the probed metric name and
    # its direction; the baseline is not read there (the trial's recipe is given).
    rebuilt = {"metric": metric, "target": goal, "direction": "max" if higher else "min",
               "max_train_seconds": max_train_seconds,
               "eval_every_seconds": eval_every_seconds, "eval_batch_size": eval_batch_size,
               "name": name}
    return OwnLoopTask(**fields, default_batch_size=baseline.batch_size,
                       default_lr=baseline.lr, description=description, runner=runner,
                       baseline=baseline, integration="trainer", refusal=trainer_refusal,
                       load_spec=worker_spec("trainer", spec, factory, rebuilt))


def _probe(make: TrainerFactory, spec: str, metric: str, target: float, higher: bool,
           direction: str | None, baseline: Recipe, device: str,
           eval_batch_size: int | None) -> dict[str, Any]:
    """Build the Trainer from the baseline's arguments and evaluate the untrained model:
    ``UserError`` for each mistake (module docstring). Returns the task fields it learns:
    the metric's reported name, and the Trainer's model and data (for the memory prediction
    and the DataLoader knobs) where they are map-style torch Datasets."""
    seed_everything(0)  # the untrained model the checks see is the same each time
    with tempfile.TemporaryDirectory(prefix="autotune-probe-") as out:
        args = trainer_arguments(baseline, out, device, eval_batch_size=eval_batch_size)
        try:
            made = make(args)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's factory: any failure is named
            raise UserError(f"--trainer {spec!r}: the factory raised {type(exc).__name__}: "
                            f"{_first_line(exc)} (run it in Python to see the traceback)") from exc
        trainer = quiet(checked_trainer(made, spec, args))
        try:
            metrics = trainer.evaluate()
        except Exception as exc:  # noqa: BLE001 - the user's evaluation: any failure is named
            raise UserError(f"--trainer {spec!r}: Trainer.evaluate() on the untrained model "
                            f"raised {type(exc).__name__}: {_first_line(exc)}") from exc
    if metric not in metrics and f"eval_{metric}" in metrics:
        metric = f"eval_{metric}"
    if metric not in metrics:
        raise UserError(f"--metric {metric!r}: {missing_metric(metric, metrics)}")
    value = _number(metrics[metric])
    if not math.isfinite(value):
        raise UserError(f"--metric {metric!r} of the untrained model is {value}; it must be a "
                        "finite number for time-to-target to be measured")
    if (value >= target) if higher else (value <= target):
        way, flip, better = ("max", "min", "lower") if higher else ("min", "max", "higher")
        why = "given" if direction else "guessed from its name"
        raise UserError(
            f"--target {target:g} means nothing for {metric!r} in direction {way} ({why}): the "
            f"untrained model already has {value:.4g}, so every trial would reach it at once. "
            f"Give a target beyond it, or --direction {flip} if {better} is better")
    return {"metric": metric, "about": f"untrained {metric} {value:.4g}",
            **_data_fields(trainer)}


def _data_fields(trainer: Trainer) -> dict[str, Any]:
    """The Trainer's model and map-style torch Datasets as task fields, so that the memory
    prediction can trace a step and the default space searches the DataLoader knobs; the
    placeholders where they are not map-style torch Datasets (a ``datasets.Dataset`` is not
    one: those recipes are then launched without a prediction)."""
    train, validation = trainer.train_dataset, trainer.eval_dataset
    if not all(isinstance(d, Dataset) and hasattr(d, "__len__") for d in (train, validation)):
        return {"train": NO_DATA, "validation": NO_DATA}
    model = trainer.model
    config = getattr(model, "config", None)
    if isinstance(model, PreTrainedModel) and config is not None:
        # A fresh model from its config: what the memory trace builds on fake tensors (a copy
        # of real weights cannot be made there).
        def build() -> torch.nn.Module:
            return type(model)(config)
    else:
        kept = copy.deepcopy(model).cpu()

        def build() -> torch.nn.Module:
            return copy.deepcopy(kept)
    return {"train": train, "validation": validation, "collate": trainer.data_collator,
            "build_model": build, "loss": _model_loss, "evaluate": _mean_loss}


def _model_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """A transformers model's own loss on a collated batch (labels in it), as the Trainer's
    ``compute_loss`` takes it."""
    out = model(**batch)
    return out["loss"] if isinstance(out, Mapping) else out[0]


def _mean_loss(model: torch.nn.Module, batches: Any) -> float:
    """The model's mean loss over validation batches: what the memory trace runs for the
    evaluation phase (the Trainer's own evaluation is a forward pass per batch, as this is;
    its metric is computed on the host from the logits)."""
    losses = [float(_model_loss(model, batch)) for batch in batches]
    return sum(losses) / max(1, len(losses))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


# -- the user's own arguments as a recipe -----------------------------------------------------


def _arguments_of(given: Mapping[str, Any] | TrainingArguments | str | None) -> dict[str, Any]:
    """Keyword arguments of ``TrainingArguments`` from what the user gave (see
    ``trainer_task``); ``{}`` for the defaults."""
    if given is None:
        return {}
    if isinstance(given, TrainingArguments):
        return given.to_dict()
    if isinstance(given, str):
        path = Path(given)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"--trainer-args {given}: cannot read it as YAML or JSON ({exc})") \
                from None
        if not isinstance(data, dict):
            raise UserError(f"--trainer-args {given}: must hold a mapping of TrainingArguments "
                            f"keyword arguments, got {type(data).__name__}")
        return data
    return dict(given)


def recipe_from_training_arguments(kwargs: Mapping[str, Any]) -> Recipe:
    """The recipe closest to ``TrainingArguments(**kwargs)`` (its defaults where a key is
    missing): the baseline a Trainer search measures every speedup against.

    Exact: precision (``bf16``/``fp16``), per-device batch, accumulation, learning rate,
    weight decay, ``max_grad_norm`` as ``grad_clip`` (HF clips at 1.0 by default),
    ``adamw_torch`` and its fused form, ``sgd``, warmup steps, the DataLoader settings.
    Approximated: HF's ``linear``/``cosine`` schedules decay to 0 at ``max_steps``, a
    recipe's to 10% at ``decay_steps`` (``max_steps`` when set, else the recipe's default);
    any other optimizer becomes ``adamw``; a warmup given as a ratio becomes none."""
    with _quiet_device_setup():
        defaults = TrainingArguments(output_dir=tempfile.gettempdir(), report_to="none")
    get = lambda key: kwargs.get(key, getattr(defaults, key, None))  # noqa: E731
    optim = str(getattr(get("optim"), "value", get("optim")))
    schedule = str(getattr(get("lr_scheduler_type"), "value", get("lr_scheduler_type")))
    warmup = get("warmup_steps") or 0
    values: dict[str, Any] = {
        "precision": "bf16" if get("bf16") else "fp16" if get("fp16") else "fp32",
        "batch_size": int(get("per_device_train_batch_size")),
        "accumulation_steps": int(get("gradient_accumulation_steps")),
        "lr": float(get("learning_rate")), "weight_decay": float(get("weight_decay")),
        "grad_clip": float(get("max_grad_norm") or 0.0),
        "optimizer": "sgd" if optim == "sgd" else "adamw",
        "fused_optimizer": "fused" if optim == "adamw_torch_fused" else "default",
        "warmup_steps": int(warmup) if warmup >= 1 else 0,
        "schedule": schedule if schedule in ("linear", "cosine") else "constant",
        "dataloader_workers": int(get("dataloader_num_workers") or 0),
        "pin_memory": bool(get("dataloader_pin_memory")),
    }
    if (get("max_steps") or -1) > 0 and values["schedule"] != "constant":
        values["decay_steps"] = int(get("max_steps"))
    return Recipe(**values)


@contextlib.contextmanager
def _quiet_device_setup() -> Iterator[None]:
    """Arguments built for their defaults only: in a worker of a multi-worker trial (process
    group initialised) their device setup would warn that the group is unused, which the
    trial's own arguments (``use_cpu`` or a GPU) then use."""
    log = hf_logging.get_logger("transformers.training_args")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
