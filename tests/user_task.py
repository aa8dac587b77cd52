"""Example of a user task: the protocol behind ``load_task("package.module:function")``.

A task function takes the keyword argument ``device`` (``"cpu"`` or ``"cuda"``), may take more
keyword arguments (given as task options), and returns an ``autotune.tasks.Task``. Here: a
linear classifier on synthetic, linearly separable 2-class data, reaching 0.9 in a few steps.

    from autotune.tasks import load_task
    task = load_task("tests.user_task:make_task", options={"num_features": 8})
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autotune.tasks import Batch, Task


def make_task(device: str = "cpu", num_features: int = 16, num_samples: int = 1200) -> Task:
    """A 2-class linear problem: labels are the sign of a fixed random projection."""
    gen = torch.Generator().manual_seed(0)  # the data are fixed; only the model init varies
    x = torch.randn(num_samples, num_features, generator=gen)
    w = torch.randn(num_features, generator=gen)
    y = (x @ w > 0).long()
    n_val = num_samples // 4
    return Task(
        name="tests.user_task:make_task",
        build_model=lambda: nn.Linear(num_features, 2),
        train=(x[n_val:], y[n_val:]),
        validation=(x[:n_val], y[:n_val]),
        loss=loss,
        predict=predict,
        target=0.9,
        default_batch_size=32,
        default_lr=1e-2,
        max_train_seconds=5.0,
        eval_every_seconds=0.1,
        description=f"linear classifier on {num_samples} synthetic separable points",
        info={"num_features": num_features, "device": device},
    )


def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of the logits."""
    features, labels = batch
    return F.cross_entropy(model(features), labels)


def predict(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Class with the larger logit."""
    return model(batch[0]).argmax(dim=-1)
