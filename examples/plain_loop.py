"""Tune a training loop of your own: ``train(recipe, ctx)`` for ``autotune search --function``.

The function gets each recipe to try and a ``ctx``; ``autotune.configure`` applies the recipe to
the model (precision, optimizer, schedule, clipping, pruning...) and ``run.step`` takes one
optimizer step with it. autotune owns the clock: ``ctx.start()`` ends the setup,
``ctx.step(examples)`` after each optimizer step says when an evaluation is due,
``with ctx.evaluating():`` keeps the evaluation off the clock, and ``ctx.report(metric)`` records
it (and stops the function once the trial is decided)::

    autotune search --function examples.plain_loop:train --metric accuracy --target 0.75 \\
        --task-option batch_size=32 --task-option lr=5e-4 --max-trial-time 40s --budget 16GB

Here: BERT-tiny on the Rotten Tomatoes sentences of ``examples/hf_trainer_bert.py`` (same
data, same model), in a plain PyTorch loop instead of a Trainer.
"""

from __future__ import annotations

import torch

import autotune
from autotune.integrations import TrialContext
from examples.hf_trainer_bert import build_model, datasets

EVAL_BATCH = 256


def _loss(model: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    ids, mask, labels = batch
    length = int(mask.sum(dim=1).max())  # cut the padding to the longest sentence
    return model(input_ids=ids[:, :length], attention_mask=mask[:, :length], labels=labels).loss


def _accuracy(run: autotune.Configured, tensors: list[torch.Tensor]) -> float:
    run.model.eval()
    correct = 0
    with torch.no_grad(), run.autocast():
        for start in range(0, len(tensors[2]), EVAL_BATCH):
            ids, mask, labels = (t[start:start + EVAL_BATCH].to(run.device) for t in tensors)
            length = int(mask.sum(dim=1).max())
            logits = run.model(input_ids=ids[:, :length], attention_mask=mask[:, :length]).logits
            correct += int((logits.argmax(-1) == labels).sum())
    run.model.train()
    return correct / len(tensors[2])


def train(recipe: autotune.Recipe, ctx: TrialContext) -> None:
    """One trial: the recipe applied to a fresh model, trained until autotune stops it."""
    train_set, validation = datasets()
    x = [train_set.input_ids, train_set.attention_mask, train_set.labels]
    val = [validation.input_ids, validation.attention_mask, validation.labels]
    run = autotune.configure(recipe, build_model(), device=ctx.device)
    rows = recipe.batch_size * recipe.accumulation_steps
    order_rng = torch.Generator().manual_seed(ctx.seed)
    ctx.start()  # the training clock starts here: what came before is setup
    while True:
        order = torch.randperm(len(x[2]), generator=order_rng)
        for start in range(0, len(order) - rows + 1, rows):
            batch = [t[order[start:start + rows]].to(run.device) for t in x]
            run.step(run.split(batch), _loss)
            if ctx.step(examples=rows):
                with ctx.evaluating():
                    accuracy = _accuracy(run, val)
                ctx.report(accuracy)
