"""Bring your own task: a small MLP classifying scikit-style "two moons"-like data made here.

Run a search on it from the repository root:

    autotune search --model examples.custom_task:make_task --space examples/custom_space.yaml \
        --trials 8 --time-budget 2m

A task function takes the keyword argument ``device`` ("cpu" or "cuda"), may take more keyword
arguments (``--task-option KEY=VALUE``), and returns an ``autotune.tasks.Task``. Data are
tensors with the labels last; ``build_model`` returns a fresh model on the CPU (autotune moves
it to the device and seeds torch before calling it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from autotune.tasks import Task


def make_moons(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved half circles with Gaussian noise: not linearly separable."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    angle = torch.rand(n, generator=g) * math.pi
    x = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    x[labels == 1] = torch.stack(
        [1 - torch.cos(angle[labels == 1]), 0.5 - torch.sin(angle[labels == 1])], dim=1
    )
    return x + noise * torch.randn(n, 2, generator=g), labels


def make_task(device: str = "cpu", hidden: int = 64, noise: float = 0.15) -> Task:
    x, y = make_moons(4000, noise, seed=0)
    split = 3000

    def build_model() -> nn.Module:
        return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                             nn.ReLU(), nn.Linear(hidden, 2))

    return Task(
        name="examples.custom_task:make_task",
        build_model=build_model,
        train=(x[:split], y[:split]),
        validation=(x[split:], y[split:]),
        loss=lambda model, batch: F.cross_entropy(model(batch[0]).float(), batch[1]),
        predict=lambda model, batch: model(batch[0]).argmax(-1),
        target=0.99,
        default_batch_size=32,
        default_lr=1e-3,
        max_train_seconds=10.0,
        eval_every_seconds=0.05,
        description=f"MLP (hidden {hidden}) on 4,000 two-moons points, noise {noise}",
    )
