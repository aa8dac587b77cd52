"""Apply a recipe found by ``autotune search`` to your own model, data and training loop.

Run it from the repository root (a few seconds on a CPU):

    python examples/apply_recipe.py
    python examples/apply_recipe.py --recipe autotune_runs/<run>/best_recipe.yaml
    python examples/apply_recipe.py --fit     # also train the same model as a Task

The model (an MLP) and the data (points inside or outside a circle) are ordinary PyTorch code,
not an ``autotune`` Task. ``autotune.configure`` applies the recipe: model on the device and
pruned, optimizer, warmup/decay scheduler, autocast precision, fp16 grad scaler, and
``step`` for one optimizer step over ``accumulation_steps`` micro-batches, the same step a
search trial takes.

If you wrap your model and data as a ``Task`` instead, ``autotune.fit`` trains it through the
very code path of a trial and returns its time-to-target (see ``fit_as_task`` below)::

    result = autotune.fit(recipe, task, seed=0)
    print(result.status, result.tta_seconds, result.best_metric)
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autotune

# The recipe this example uses unless --recipe names a file (e.g. a search's best_recipe.yaml).
DEFAULT_RECIPE = autotune.Recipe(
    precision="bf16", batch_size=64, accumulation_steps=2, warmup_steps=20, lr=3e-3
)
EXPECTED_ACCURACY = 0.95
"""This example's model and data reach it with the default recipe; printed for comparison."""


def make_circle_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D points in a square; label 1 inside the circle of radius 1, else 0 (about half each):
    not linearly separable."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2.5 - 1.25
    return x, (x.norm(dim=1) < 1.0).long()


def make_model(hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 2))


def loss_fn(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """Mean loss of one micro-batch; ``step`` runs it under the recipe's autocast."""
    x, y = batch
    return F.cross_entropy(model(x).float(), y)


def evaluate(run: autotune.Configured, x: torch.Tensor, y: torch.Tensor) -> float:
    run.model.eval()
    with torch.no_grad(), run.autocast():
        correct = (run.model(x.to(run.device)).argmax(-1) == y.to(run.device)).sum()
    run.model.train()
    return int(correct) / len(y)


def train(recipe: autotune.Recipe, epochs: int, seed: int = 0) -> float:
    """A plain hand-written training loop with the recipe applied; returns final accuracy."""
    torch.manual_seed(seed)
    x, y = make_circle_data(4000, seed=seed)
    x_train, y_train, x_val, y_val = x[:3000], y[:3000], x[3000:], y[3000:]

    run = autotune.configure(recipe, make_model(), device="cpu")
    # Each loaded batch holds one optimizer step's examples; run.split cuts it into micro-batches.
    loader = DataLoader(TensorDataset(x_train, y_train), shuffle=True, drop_last=True,
                        batch_size=run.batch_size * run.accumulation_steps)
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        losses = []
        for batch in loader:
            batch = [t.to(run.device) for t in batch]
            losses.append(run.step(run.split(batch), loss_fn))
        accuracy = evaluate(run, x_val, y_val)
        lr = run.scheduler.get_last_lr()[0]
        print(f"epoch {epoch:2d}  loss {sum(losses) / len(losses):.4f}  "
              f"val accuracy {accuracy:.3f}  lr {lr:.2e}")
    return accuracy


def fit_as_task(recipe: autotune.Recipe) -> None:
    """The same model and data wrapped as a Task, trained by ``autotune.fit`` (a trial)."""
    from autotune.tasks import Task

    x, y = make_circle_data(4000, seed=0)
    task = Task(
        name="circle", build_model=make_model, train=(x[:3000], y[:3000]),
        validation=(x[3000:], y[3000:]), loss=loss_fn,
        predict=lambda model, batch: model(batch[0]).argmax(-1),
        target=EXPECTED_ACCURACY, max_train_seconds=10.0, eval_every_seconds=0.1,
    )
    result = autotune.fit(recipe, task, seed=0)
    tta = "-" if result.tta_seconds is None else f"{result.tta_seconds:.2f}s"
    print(f"fit: {result.status}, time-to-target {tta}, best accuracy "
          f"{result.best_metric:.3f} after {result.steps} optimizer steps")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", help="recipe file, e.g. a search's best_recipe.yaml")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--fit", action="store_true", help="also train it as a Task with fit")
    args = parser.parse_args(argv)

    try:
        recipe = autotune.Recipe.load(args.recipe) if args.recipe else DEFAULT_RECIPE
        print(f"recipe: {recipe.describe()}")
        accuracy = train(recipe, args.epochs)
    except autotune.UserError as exc:  # a bad recipe file, or a multi-worker recipe
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"final accuracy {accuracy:.3f} (expected >= {EXPECTED_ACCURACY})")
    if args.fit:
        fit_as_task(recipe)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
