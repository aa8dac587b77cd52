"""A toy task (two Gaussian blobs, an MLP) that reaches its target in well under a second.

It is also a user task as ``--model tests.toy_task:make_task``, which the search tests use.
"""

from __future__ import annotations

import torch
from torch import nn

from autotune.tasks import Task


def make_toy_task(target: float = 0.9, n: int = 512, dim: int = 16, seed: int = 0) -> Task:
    """Two Gaussian blobs, linearly separable: an MLP reaches 0.9 accuracy in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    centers = torch.randn(2, dim, generator=g) * 2.0
    x = centers[labels] + torch.randn(n, dim, generator=g)
    split = n * 3 // 4

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 2))

    def loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch[0]).float(), batch[1])

    def predict(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        return model(batch[0]).argmax(-1)

    return Task(
        name="toy", build_model=build, train=(x[:split], labels[:split]),
        validation=(x[split:], labels[split:]), loss=loss, predict=predict, target=target,
        default_batch_size=32, default_lr=1e-2, max_train_seconds=5.0, eval_every_seconds=0.01,
    )


def make_task(device: str = "cpu", target: float = 0.9, suggest: dict | None = None,
              eval_batch_size: int | None = None, slow_batch: int | None = None,
              slow_seconds: float = 0.3) -> Task:
    """User-task entry point: ``autotune search --model tests.toy_task:make_task``.

    ``suggest`` (changes to the baseline) becomes the task's one warm-start recipe: tests use it
    to make a search run a given recipe second, whatever the sampler would draw.
    ``slow_batch``: a micro-batch of that many examples takes ``slow_seconds`` more per loss
    (fakes hardware on which that configuration is slow, as fp16 is on most CPUs)."""
    import dataclasses
    import time

    task = make_toy_task(target=target)
    if eval_batch_size is not None:  # a test whose memory comparison is of the step
        task = dataclasses.replace(task, eval_batch_size=eval_batch_size)
    if slow_batch is not None:
        base_loss = task.loss

        def loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
            if len(batch[0]) == slow_batch:
                time.sleep(slow_seconds)
            return base_loss(model, batch)

        task = dataclasses.replace(task, loss=loss)
    return dataclasses.replace(task, suggested_recipes=(suggest,)) if suggest else task


def make_crashing_task(device: str = "cpu", crash_rank: int = 1, after_calls: int = 3,
                       crash_batch: int | None = None, suggest: dict | None = None) -> Task:
    """The toy task, except that worker ``crash_rank`` of a multi-worker run dies (SIGKILL, as
    the OOM killer does it) on its ``after_calls``-th loss: fakes the machine, not the logic.
    With ``crash_batch``, instead a single-process trial whose micro-batch has that many
    examples dies the same way."""
    import dataclasses
    import os
    import signal

    import torch.distributed as dist

    base = make_toy_task(target=1.01)
    calls = {"n": 0}

    def loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        calls["n"] += 1
        if crash_batch is not None:
            if len(batch[0]) == crash_batch and calls["n"] >= after_calls:
                os.kill(os.getpid(), signal.SIGKILL)
        elif dist.is_initialized() and dist.get_rank() == crash_rank and calls["n"] >= after_calls:
            os.kill(os.getpid(), signal.SIGKILL)
        return base.loss(model, batch)

    return dataclasses.replace(base, loss=loss,
                               suggested_recipes=(suggest,) if suggest else ())


def make_loss_task(device: str = "cpu", target: float = 0.3, suggest: dict | None = None,
                   broken_metric: str | None = None, eval_every_seconds: float = 0.05) -> Task:
    """A metric that must go DOWN: the validation cross-entropy (``evaluate``,
    ``higher_is_better=False``) on overlapping blobs, so that it falls from 0.69 to about 0.23
    over a second or two at lr 1e-2 and stays near 0.69 at lr 1e-4. ``broken_metric`` makes the
    metric fail the way a user's function can: ``"nan"`` returns NaN, ``"text"`` returns a
    string, ``"raise"`` raises."""
    g = torch.Generator().manual_seed(0)
    n, dim = 1024, 16
    labels = torch.randint(0, 2, (n,), generator=g)
    x = (torch.randn(2, dim, generator=g) * 0.5)[labels] + torch.randn(n, dim, generator=g)
    split = n * 3 // 4

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, 2))

    def loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch[0]).float(), batch[1])

    def val_loss(model: nn.Module, batches) -> float:
        if broken_metric == "raise":
            raise KeyError("labels")
        total, count = 0.0, 0
        for batch in batches:
            total += float(nn.functional.cross_entropy(model(batch[0]).float(), batch[1],
                                                       reduction="sum"))
            count += len(batch[1])
        return {"nan": float("nan"), "text": "low"}.get(broken_metric or "", total / count)

    return Task(
        name="toy_loss", build_model=build, train=(x[:split], labels[:split]),
        validation=(x[split:], labels[split:]), loss=loss, predict=None, evaluate=val_loss,
        higher_is_better=False, metric="val_loss", target=target, default_batch_size=32,
        default_lr=1e-2, max_train_seconds=5.0, eval_every_seconds=eval_every_seconds,
        suggested_recipes=(suggest,) if suggest else (),
    )


class PairDataset(torch.utils.data.Dataset):
    """Map-style samples ``(x[i], y[i])`` of two tensors: the same data as a tensor task, read
    one sample at a time. ``delay`` seconds of sleep per sample stand in for decoding work."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, delay: float = 0.0) -> None:
        self.x, self.y, self.delay = x, y, delay

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.delay:
            import time

            time.sleep(self.delay)
        return self.x[i], self.y[i]


def as_dataset_task(task: Task, collate=None, delay: float = 0.0) -> Task:  # noqa: ANN001
    """``task`` with its tensors given as ``PairDataset``s (and an optional collate)."""
    import dataclasses

    return dataclasses.replace(
        task, train=PairDataset(*task.train, delay=delay),
        validation=PairDataset(*task.validation), collate=collate)


def make_dataset_task(device: str = "cpu", delay: float = 0.0) -> Task:
    """User-task entry point: the lower-is-better toy task read from Datasets."""
    return as_dataset_task(make_loss_task(), delay=delay)


def make_uneven_eval_task(device: str = "cpu", slow_rank: int = 1,
                          seconds: float = 0.02) -> Task:
    """The toy task with an unreachable target whose evaluation is slow on worker
    ``slow_rank`` of a multi-worker run only (a busier machine, say): the workers' evaluations
    take different times, and they must still agree on when to evaluate next."""
    import dataclasses
    import time

    import torch.distributed as dist

    base = make_toy_task(target=1.01)

    def predict(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        if dist.is_initialized() and dist.get_rank() == slow_rank:
            time.sleep(seconds)
        return base.predict(model, batch)

    return dataclasses.replace(base, predict=predict, eval_every_seconds=0.01)
