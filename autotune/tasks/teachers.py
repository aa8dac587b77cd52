"""Teachers for knowledge distillation: trained once per machine, cached like a download.

A task's ``teacher`` (``Task.teacher``) returns a trained model. For the built-in tasks none
ships as a file, so ``trained_teacher`` trains one, once, on the task's training data (never
its validation data), and keeps its weights in ``autotune``'s cache
(``$AUTOTUNE_CACHE_DIR/teachers``): every later trial, search and process loads them in
milliseconds. Its training is a one-time cost, as downloading a checkpoint would be; it runs
during a trial's setup (or at a search's start), never on a trial's training clock, and is
measured: the seconds it took are logged once and kept beside the weights
(``TeacherRecord``).

The cache file is named by a digest of everything the weights depend on: the task's name,
the teacher's configuration (architecture and training settings, ``TeacherSpec``) and the
training data's bytes; so a change to any of them trains a new teacher. Training is
deterministic (its own seeded generator for the order of examples and initial weights, in a
forked RNG so the caller's random state is untouched). Two processes that ask at once are
safe: the first takes a file lock and trains; the other waits on the lock and then loads
what the first wrote (written to a temporary file, then renamed into place atomically).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autotune.cache import cache_dir

LOG = logging.getLogger(__name__)

TEACHERS = "teachers"
"""The cache folder of teachers' weights, under ``autotune.cache.cache_dir``."""


@dataclass(frozen=True)
class TeacherSpec:
    """How a teacher is built and trained: what its cached weights depend on, besides the
    task and its data."""

    name: str
    """Names the teacher in its cache file and in logs (``mnist-wide-cnn``)."""
    config: Mapping[str, Any]
    """The architecture's settings (plain values: they are hashed into the cache key)."""
    epochs: int
    """Passes over the training data."""
    batch_size: int
    lr: float
    """Peak AdamW learning rate (weight decay 0.01), decayed linearly to 0 over training."""
    seed: int = 0
    """Seeds the initial weights and the order of examples."""
    version: int = 1
    """Bump to retrain when the training code changes in a way the fields above miss."""


@dataclass(frozen=True)
class TeacherRecord:
    """What training a teacher cost and reached, stored beside its weights."""

    name: str
    train_seconds: float
    """Wall-clock seconds of the one-time training (on this machine, when it was built)."""
    steps: int
    metric: float | None
    """The teacher's validation metric when an ``evaluate`` function was given."""
    threads: int
    """``torch.get_num_threads()`` while it trained."""


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""``augment(inputs, generator) -> inputs``: a random change of a batch's first tensor (the
inputs) for training the teacher, drawn from ``generator`` (deterministic)."""

_LOADED: dict[Path, dict[str, torch.Tensor]] = {}
"""Weights already read in this process, by cache file: one read per process."""


def trained_teacher(
    task_name: str,
    spec: TeacherSpec,
    build: Callable[[], nn.Module],
    train: tuple[torch.Tensor, ...],
    loss: Callable[[nn.Module, list[torch.Tensor]], torch.Tensor],
    evaluate: Callable[[nn.Module], float] | None = None,
    augment: Augment | None = None,
) -> nn.Module:
    """A fresh ``build()`` module with the weights of the teacher ``spec`` trained on
    ``train`` (tensors, labels last) with ``loss``, from the cache, or trained now and cached
    (see the module docstring). Returned on the CPU, in eval mode, without gradients.

    ``evaluate(model) -> metric`` is measured once after training and recorded; ``augment``
    changes each training batch's inputs (name it in ``spec.config``: it changes the
    weights)."""
    path = teacher_path(task_name, spec, train)
    state = _LOADED.get(path)
    if state is None:
        state = _load_or_train(path, task_name, spec, build, train, loss, evaluate, augment)
        _LOADED[path] = state
    model = build()
    model.load_state_dict(state)
    model.eval()
    model.requires_grad_(False)
    return model


def teacher_path(task_name: str, spec: TeacherSpec, train: tuple[torch.Tensor, ...]) -> Path:
    """The cache file of a teacher's weights: named by the digest of the task's name, the
    spec and the training data's bytes."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"task": task_name, **asdict(spec)}, sort_keys=True,
                             default=str).encode())
    for tensor in train:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return cache_dir(TEACHERS) / f"{task_name}-{spec.name}-{digest.hexdigest()[:16]}.pt"


def teacher_record(path: Path) -> TeacherRecord | None:
    """The record stored beside a cached teacher's weights (None when there is none)."""
    meta = path.with_suffix(".json")
    if not meta.exists():
        return None
    return TeacherRecord(**json.loads(meta.read_text()))


def _load_or_train(
    path: Path, task_name: str, spec: TeacherSpec, build: Callable[[], nn.Module],
    train: tuple[torch.Tensor, ...],
    loss: Callable[[nn.Module, list[torch.Tensor]], torch.Tensor],
    evaluate: Callable[[nn.Module], float] | None, augment: Augment | None,
) -> dict[str, torch.Tensor]:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be training it right now
        try:
            if path.exists():
                return torch.load(path, map_location="cpu", weights_only=True)
            state, record = _train(spec, build, train, loss, evaluate, augment)
            _atomic_write(path, lambda f: torch.save(state, f))
            _atomic_write(path.with_suffix(".json"),
                          lambda f: f.write(json.dumps(asdict(record), indent=1).encode()))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    metric = f", validation metric {record.metric:.4f}" if record.metric is not None else ""
    LOG.warning("trained the distillation teacher %s for task %r once in %.1f s (%d steps on "
                "%d threads%s); cached at %s", spec.name, task_name, record.train_seconds,
                record.steps, record.threads, metric, path)
    return state


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Write ``path`` through a temporary file in its folder, renamed into place: a reader
    sees the whole file or none."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _train(
    spec: TeacherSpec, build: Callable[[], nn.Module], train: tuple[torch.Tensor, ...],
    loss: Callable[[nn.Module, list[torch.Tensor]], torch.Tensor],
    evaluate: Callable[[nn.Module], float] | None, augment: Augment | None,
) -> tuple[dict[str, torch.Tensor], TeacherRecord]:
    """Train the teacher: ``epochs`` shuffled passes of AdamW, the learning rate decayed
    linearly from ``lr`` to 0 (a teacher is trained to its best end point, not fast)."""
    start = time.perf_counter()
    n = int(train[0].shape[0])
    steps = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = build()
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
        total = max(1, spec.epochs * (n // spec.batch_size))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / total))
        order = torch.Generator().manual_seed(spec.seed)
        for _ in range(spec.epochs):
            perm = torch.randperm(n, generator=order)
            for begin in range(0, n - spec.batch_size + 1, spec.batch_size):
                idx = perm[begin : begin + spec.batch_size]
                batch = [t[idx] for t in train]
                if augment is not None:
                    batch[0] = augment(batch[0], order)
                value = loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
                schedule.step()
                steps += 1
        model.eval()
        with torch.no_grad():
            metric = float(evaluate(model)) if evaluate is not None else None
    record = TeacherRecord(name=spec.name, train_seconds=round(time.perf_counter() - start, 3),
                           steps=steps, metric=metric, threads=torch.get_num_threads())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, record
