"""A tiny Hugging Face ``Trainer`` for the ``--trainer`` tests: a 1-layer BERT (built from a
config, no download) telling two token vocabularies apart, a few seconds to 0.9 accuracy.

``make_trainer(args)`` is the factory a Trainer search takes; the other functions are the
mistakes the tests expect a clear message for, spies, and (at the end) the factories of the
multi-worker tests.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

SEQ = 16
VOCAB = 64


class TwoVocabularies(Dataset):
    """Sentences of ``SEQ`` tokens: class 0 draws from tokens 4..33, class 1 from 24..63 (an
    overlap, so that it takes some steps), labels balanced; fixed by ``seed``."""

    def __init__(self, size: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (size,), generator=gen)
        low = torch.randint(4, 34, (size, SEQ), generator=gen)
        high = torch.randint(24, VOCAB, (size, SEQ), generator=gen)
        self.ids = torch.where(self.labels[:, None] == 1, high, low)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "labels": self.labels[i]}


def accuracy(prediction: Any) -> dict[str, float]:
    """``compute_metrics``: the Trainer reports it as ``eval_accuracy``."""
    logits, labels = prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def tiny_bert() -> BertForSequenceClassification:
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=SEQ, num_labels=2)
    return BertForSequenceClassification(config)


def make_trainer(args: TrainingArguments) -> Trainer:
    """The factory: the user's model, data and metric, autotune's arguments."""
    return Trainer(model=tiny_bert(), args=args, train_dataset=TwoVocabularies(2048, 0),
                   eval_dataset=TwoVocabularies(256, 1), compute_metrics=accuracy)


def not_a_trainer(args: TrainingArguments) -> Any:
    return {"model": tiny_bert(), "args": args}


def own_arguments(args: TrainingArguments) -> Trainer:
    mine = TrainingArguments(output_dir=args.output_dir, report_to="none")
    return Trainer(model=tiny_bert(), args=mine, train_dataset=TwoVocabularies(64, 0),
                   eval_dataset=TwoVocabularies(64, 1), compute_metrics=accuracy)


def no_metrics(args: TrainingArguments) -> Trainer:
    """No compute_metrics: the evaluation reports eval_loss and timings only."""
    return Trainer(model=tiny_bert(), args=args, train_dataset=TwoVocabularies(256, 0),
                   eval_dataset=TwoVocabularies(64, 1))


SEEN: dict[str, list[Any]] = {"forward": [], "lr": [], "args": []}
"""What ``make_spied_trainer``'s Trainer ran with, as seen inside it (one process)."""


class Spy(TrainerCallback):
    """Records the arguments at the start, and the optimizer's learning rate at each step's
    end (after the scheduler stepped: the next step's rate)."""

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any,
                       **kwargs: Any) -> None:
        SEEN["args"].append(args)
        SEEN["first_lr"] = kwargs["optimizer"].param_groups[0]["lr"]

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any,
                    **kwargs: Any) -> None:
        SEEN["lr"].append(kwargs["optimizer"].param_groups[0]["lr"])
        SEEN["optimizer"] = kwargs["optimizer"]


def make_spied_trainer(args: TrainingArguments) -> Trainer:
    """``make_trainer`` with a spy: in each training forward pass, the classifier's rows, its
    output's dtype and whether autocast is on (a forward hook inside the model, where the
    Trainer's autocast applies), and the ``Spy`` callback."""
    for values in SEEN.values():
        if isinstance(values, list):
            values.clear()
    model = tiny_bert()

    def record(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if module.training:
            SEEN["forward"].append((inputs[0].shape[0], torch.is_autocast_enabled("cpu"),
                                    output.dtype))

    model.classifier.register_forward_hook(record)
    return Trainer(model=model, args=args, train_dataset=TwoVocabularies(2048, 0),
                   eval_dataset=TwoVocabularies(256, 1), compute_metrics=accuracy,
                   callbacks=[Spy()])


def out_of_memory_after_steps(args: TrainingArguments) -> Trainer:
    """A Trainer whose model runs out of memory at its 6th training forward pass (a real
    ``torch.cuda.OutOfMemoryError``, raised on the CPU: the hardware faked, not the logic)."""
    model = tiny_bert()
    calls = {"n": 0}

    def oom(module: torch.nn.Module, inputs: Any) -> None:
        if module.training:
            calls["n"] += 1
            if calls["n"] >= 6:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    model.register_forward_pre_hook(oom)
    return Trainer(model=model, args=args, train_dataset=TwoVocabularies(2048, 0),
                   eval_dataset=TwoVocabularies(256, 1), compute_metrics=accuracy)


def slow_accuracy(prediction: Any) -> dict[str, float]:
    """``accuracy`` that takes 0.2 s more: evaluation time the clock must not count."""
    time.sleep(0.2)
    return accuracy(prediction)


class WallClock(TrainerCallback):
    """The wall clock at the start and the end of training, into ``SEEN``."""

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any,
                       **kwargs: Any) -> None:
        SEEN["began"] = time.perf_counter()

    def on_train_end(self, args: TrainingArguments, state: Any, control: Any,
                     **kwargs: Any) -> None:
        SEEN["ended"] = time.perf_counter()


def make_slow_eval_trainer(args: TrainingArguments) -> Trainer:
    return Trainer(model=tiny_bert(), args=args, train_dataset=TwoVocabularies(2048, 0),
                   eval_dataset=TwoVocabularies(256, 1), compute_metrics=slow_accuracy,
                   callbacks=[WallClock()])


# -- multi-worker trials (tests/test_integration_workers.py) ----------------------------------

RECORD_DIR = "AUTOTUNE_TEST_RECORD_DIR"
"""The environment variable naming the folder where ``make_recorded_trainer``'s workers each
write what they saw (a worker is another process: the test reads the files)."""


class WorkerRecord(TrainerCallback):
    """What a worker's Trainer ran with, as JSON in ``$AUTOTUNE_TEST_RECORD_DIR/rank<N>.json``:
    the arguments' world size and parallel mode, the environment torchrun sets, the process
    group, the type of the model the Trainer trains (its DDP/FSDP/DeepSpeed wrapper), each
    step's rows and each evaluation's metrics. Worker 1 evaluates 0.3 s longer."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.seen: dict[str, Any] = {"rows": [], "evaluations": []}

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any,
                       **kwargs: Any) -> None:
        import torch.distributed as dist

        self.seen.update(
            world_size=args.world_size, parallel_mode=str(args.parallel_mode),
            process_index=args.process_index,
            env={k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                                                "MASTER_PORT")},
            group=dist.get_world_size() if dist.is_initialized() else None)

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any,
                    **kwargs: Any) -> None:
        self.seen["wrapped"] = type(self.trainer.model_wrapped).__name__
        self.seen["steps"] = state.global_step

    def on_evaluate(self, args: TrainingArguments, state: Any, control: Any,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        self.seen["evaluations"].append((metrics or {}).get("eval_accuracy"))
        if args.process_index == 1:
            # Worker 1's evaluations take longer (its clock and schedule differ from worker
            # 0's): a worker that spaced the next evaluation by its own would meet the
            # others in a different collective.
            time.sleep(0.3)

    def on_train_end(self, args: TrainingArguments, state: Any, control: Any,
                     **kwargs: Any) -> None:
        folder = Path(os.environ[RECORD_DIR])
        (folder / f"rank{args.process_index}.json").write_text(json.dumps(self.seen))


def make_recorded_trainer(args: TrainingArguments) -> Trainer:
    """``make_trainer`` whose workers record what they ran with (``WorkerRecord``) and the
    rows of each training forward pass."""
    model = tiny_bert()
    trainer = Trainer(model=model, args=args, train_dataset=TwoVocabularies(2048, 0),
                      eval_dataset=TwoVocabularies(256, 1), compute_metrics=accuracy)
    record = WorkerRecord(trainer)

    def rows(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if module.training:
            record.seen["rows"].append(inputs[0].shape[0])

    model.classifier.register_forward_hook(rows)
    trainer.add_callback(record)
    return trainer


def fails_on_rank_1(args: TrainingArguments) -> Trainer:
    """A Trainer whose model raises at worker 1's 4th training forward pass (worker 0 goes
    on into the step's gradient all-reduce, where it would wait for worker 1)."""
    model = tiny_bert()
    calls = {"n": 0}

    def boom(module: torch.nn.Module, inputs: Any) -> None:
        if module.training and args.process_index == 1:
            calls["n"] += 1
            if calls["n"] >= 4:
                raise ValueError("worker 1's data is broken")

    model.register_forward_pre_hook(boom)
    return Trainer(model=model, args=args, train_dataset=TwoVocabularies(2048, 0),
                   eval_dataset=TwoVocabularies(256, 1), compute_metrics=accuracy)
