"""Dataset tasks and the DataLoader knobs: a Dataset task trains exactly as the same data given
as tensors, and each knob (workers, pinned memory, prefetching, persistent workers) acts."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
import torch

from autotune.memory import largest_batch, predict_peak
from autotune.recipe import Recipe
from autotune.tasks import Task, dry_run
from autotune.train import TrialLimits, run_trial
from autotune.train.data import LoaderBatches, inactive_data_knobs, loader_options
from tests.toy_task import PairDataset, as_dataset_task, make_loss_task

CPU = torch.device("cpu")


class PidDataset(torch.utils.data.Dataset):
    """Each sample is (index, id of the process that read it)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(i), torch.tensor(os.getpid())


class CountingDataset(torch.utils.data.Dataset):
    """Counts its reads in shared memory, so reads in loader workers count too."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.reads = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        return torch.zeros(2), torch.tensor(0)


def _task(dataset: torch.utils.data.Dataset) -> Task:
    base = make_loss_task()
    return Task(name="data", build_model=base.build_model, train=dataset, validation=dataset,
                loss=base.loss, predict=None, evaluate=base.evaluate, target=1.0,
                higher_is_better=False)


def _batches(dataset: torch.utils.data.Dataset, **knobs: object) -> LoaderBatches:
    recipe = Recipe(batch_size=4, **knobs)
    return LoaderBatches(_task(dataset), recipe, seed=0, device=CPU)


def _train(task: Task, recipe: Recipe, steps: int = 40):
    limits = TrialLimits(max_train_seconds=60, eval_every_seconds=1e9, target=0.01,
                         higher_is_better=False, seed=3, max_steps=steps)
    return run_trial(task, recipe, limits, device="cpu")


@pytest.mark.parametrize("recipe", [
    Recipe(batch_size=16, lr=1e-2),
    Recipe(batch_size=8, accumulation_steps=3, lr=1e-2, precision="bf16"),
    Recipe(batch_size=16, lr=1e-2, dataloader_workers=2, prefetch_factor=3),
], ids=["baseline", "accum-bf16", "2-workers"])
def test_a_dataset_task_trains_exactly_as_its_tensors(recipe):
    # Dropout: the DataLoader must not draw from torch's global generator either.
    tensors = dataclasses.replace(make_loss_task(), build_model=lambda: torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 2)))
    # 48 steps of 16 = 768 = one epoch of the 768 training examples, plus a second epoch
    # begun: the order carries over epochs the same way.
    steps = 60 if recipe.accumulation_steps == 1 else 40
    a = _train(tensors, recipe, steps)
    b = _train(as_dataset_task(tensors), recipe, steps)
    assert a.status == b.status == "not_reached", (a.message, b.message)
    assert a.steps == b.steps == steps and a.examples == b.examples
    assert b.last_metric == pytest.approx(a.last_metric, rel=1e-6, abs=1e-7)
    assert a.last_metric < 0.6  # it trained
    assert a.loader_start_seconds == 0.0 and b.loader_start_seconds > 0.0


def test_loader_workers_are_separate_processes():
    batches = _batches(PidDataset(64), dataloader_workers=2)
    batches.start()
    pids = {int(p) for _ in range(8) for p in batches.next()[1]}
    batches.close()
    assert os.getpid() not in pids
    assert len(pids) == 2
    # Without workers the training process reads every sample itself.
    batches = _batches(PidDataset(64))
    batches.start()
    assert {int(p) for p in batches.next()[1]} == {os.getpid()}


@pytest.mark.parametrize("persistent", [True, False])
def test_persistent_workers_survive_the_epoch(persistent):
    # 8 samples in batches of 4: 2 batches an epoch, 3 epochs.
    batches = _batches(PidDataset(8), dataloader_workers=1, persistent_workers=persistent)
    batches.start()
    per_epoch = []
    for _ in range(3):
        per_epoch.append({int(p) for _ in range(2) for p in batches.next()[1]})
        # Take the next epoch's first batch before comparing: the loader starts (or reuses)
        # its worker when the epoch begins.
    batches.close()
    assert batches.epochs == 3
    if persistent:
        assert per_epoch[0] == per_epoch[1] == per_epoch[2]
    else:
        assert len(per_epoch[0] | per_epoch[1] | per_epoch[2]) == 3  # a new worker per epoch


def _reads_ahead(prefetch_factor: int) -> int:
    dataset = CountingDataset(400)
    batches = _batches(dataset, dataloader_workers=1, prefetch_factor=prefetch_factor)
    batches.start()  # one batch taken
    deadline = time.monotonic() + 10
    last = -1
    while time.monotonic() < deadline:  # until the worker stops reading ahead
        time.sleep(0.2)
        now = int(dataset.reads)
        if now == last:
            break
        last = now
    batches.close()
    return last


def test_prefetch_factor_sets_how_far_workers_read_ahead():
    # A worker keeps prefetch_factor batches in flight beyond the one taken.
    assert _reads_ahead(2) == 4 * (1 + 2)
    assert _reads_ahead(5) == 4 * (1 + 5)


def test_pin_memory_is_recorded_as_inactive_without_a_gpu():
    task = as_dataset_task(make_loss_task())
    recipe = Recipe(pin_memory=True, dataloader_workers=1)
    assert loader_options(recipe, "cpu")["pin_memory"] is False
    assert loader_options(recipe, "cuda")["pin_memory"] is True
    notes = inactive_data_knobs(task, recipe, "cpu")
    assert len(notes) == 1 and notes[0].startswith("pin_memory: no effect on cpu")
    assert inactive_data_knobs(task, recipe, "cuda") == []
    result = _train(task, recipe, steps=3)
    assert result.inactive_knobs == notes


def test_data_knobs_on_a_tensor_task_are_recorded_as_inactive():
    result = _train(make_loss_task(), Recipe(dataloader_workers=2, persistent_workers=True),
                    steps=3)
    assert [n.split(":")[0] for n in result.inactive_knobs] == \
        ["dataloader_workers", "persistent_workers"]
    assert result.status == "not_reached"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pinned_batches_are_pinned_on_a_gpu():
    task = _task(PidDataset(64))
    for pin in (True, False):
        batches = LoaderBatches(task, Recipe(batch_size=4, pin_memory=pin,
                                             dataloader_workers=1), 0, torch.device("cuda"))
        batches.start()
        raw = next(iter(batches.loader))
        assert raw[0].is_pinned() == pin
        assert batches.next()[0].device.type == "cuda"
        batches.close()


def test_waiting_for_data_is_training_time_and_worker_start_is_setup():
    # 10 ms a sample, 16 samples a batch: every batch costs at least 0.16 s to read. (96
    # samples: the memory measurement reads each once, in setup, to find the largest.)
    base = make_loss_task()
    task = dataclasses.replace(
        base, train=PairDataset(base.train[0][:96], base.train[1][:96], delay=0.01),
        validation=PairDataset(*base.validation))
    result = _train(task, Recipe(batch_size=16, lr=1e-2), steps=4)
    assert result.loader_start_seconds >= 0.16  # the first batch, read during setup
    assert result.train_seconds >= 3 * 0.16  # the other three, read on the training clock
    assert result.setup_seconds >= result.loader_start_seconds


def test_largest_batch_of_a_dataset_collates_its_longest_samples():
    lengths = [3, 9, 1, 7, 9, 2, 5, 4]
    data = [torch.arange(1, n + 1) for n in lengths]

    class Seqs(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i: int):  # noqa: ANN204
            return data[i], torch.tensor(i % 2)

    def pad(samples):  # noqa: ANN001, ANN202
        seqs = torch.nn.utils.rnn.pad_sequence([s[0] for s in samples], batch_first=True)
        return seqs, torch.stack([s[1] for s in samples])

    def build():  # noqa: ANN202
        return torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(0),
                                   torch.nn.LazyLinear(2))

    task = Task(name="seqs", build_model=build, train=Seqs(), validation=Seqs(), collate=pad,
                loss=lambda m, b: m(b[0]).sum(), predict=None, evaluate=lambda m, b: 1.0,
                target=0.5, higher_is_better=False)
    seqs, labels = largest_batch(task, 3)
    assert seqs.shape == (3, 9)  # the two 9s and the 7, padded to 9
    assert sorted((seqs != 0).sum(1).tolist()) == [7, 9, 9]
    assert labels.tolist() == [1, 0, 1]  # samples 1, 4, 3


def test_memory_prediction_and_dry_run_read_a_dataset_task():
    task = as_dataset_task(make_loss_task())
    dry_run(task, 32)
    tensors = predict_peak(make_loss_task(), Recipe(batch_size=64), "cpu").peak_bytes
    assert predict_peak(task, Recipe(batch_size=64), "cpu").peak_bytes == tensors


def test_a_task_mixing_tensors_and_a_dataset_is_refused():
    base = make_loss_task()
    with pytest.raises(ValueError, match="both as tensors or both as Datasets"):
        Task(name="x", build_model=base.build_model, train=PairDataset(*base.train),
             validation=base.validation, loss=base.loss, predict=None, evaluate=base.evaluate,
             target=1.0)
    with pytest.raises(ValueError, match="collate applies to Dataset data"):
        Task(name="x", build_model=base.build_model, train=base.train,
             validation=base.validation, loss=base.loss, predict=None, evaluate=base.evaluate,
             target=1.0, collate=lambda s: s)


@pytest.mark.distributed
def test_a_dataset_task_trains_exactly_as_its_tensors_under_ddp():
    # Each worker reads its share through its own DataLoader, with a loader worker of its own
    # (so a trial's worker processes may have children).
    from autotune.tasks import load_task

    recipe = Recipe(batch_size=16, lr=1e-2, parallelism="ddp", workers=2, dataloader_workers=1)
    a = _train(load_task("tests.toy_task:make_loss_task"), recipe, steps=20)
    b = _train(load_task("tests.toy_task:make_dataset_task"), recipe, steps=20)
    assert a.status == b.status == "not_reached", (a.message, b.message)
    assert b.last_metric == pytest.approx(a.last_metric, rel=1e-6, abs=1e-7)
    assert b.loader_start_seconds > 0


def test_the_progress_line_shows_loader_start_and_inactive_knobs():
    from autotune.report import finished_line
    from autotune.results import TrialRecord

    record = TrialRecord(trial=3, status="reached", tta_seconds=4.0, best_metric=0.2,
                         loader_start_seconds=1.25,
                         inactive_knobs=["pin_memory: no effect on cpu (...)"])
    line = finished_line(record, 10, None, "val_loss")
    assert "loader start 1.2s" in line and "(no effect: pin_memory)" in line
    plain = finished_line(TrialRecord(trial=3, status="reached", tta_seconds=4.0), 10, None)
    assert "loader" not in plain and "no effect" not in plain


def test_a_trial_records_the_device_knobs_that_had_no_effect():
    # channels_last on a model without convolutions: a recorded no-op (autotune.knobs).
    result = _train(make_loss_task(), Recipe(channels_last=True), steps=2)
    assert [n.split(":")[0] for n in result.inactive_knobs] == ["channels_last"]


def test_autotune_train_names_loader_start_and_knobs_without_effect(tmp_path, capsys):
    from autotune.cli import main

    path = tmp_path / "recipe.yaml"
    Recipe(lr=1e-2, dataloader_workers=1, pin_memory=True).save(path)
    # 2 ms a sample: the loader's first batch of 32 takes over 0.05 s, so it is named.
    code = main(["train", "--recipe", str(path), "--model", "tests.toy_task:make_dataset_task",
                 "--task-option", "delay=0.002", "--target", "0.6"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "before it starting the DataLoader" in out
    assert "no effect: pin_memory: no effect on cpu" in out
