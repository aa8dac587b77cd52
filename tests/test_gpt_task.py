"""The built-in ``gpt`` task: real text loads offline as byte blocks, the model has the stated
size, a baseline trial lowers the validation loss to a target, and the shipped space holds the
baseline."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from autotune import objective
from autotune.errors import UserError
from autotune.recipe import baseline_recipe
from autotune.space import load_space
from autotune.tasks import Task, evaluate_metric, load_task
from autotune.tasks import gpt as gpt_module
from autotune.train import TrialLimits, run_trial

CPU = torch.device("cpu")
SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "gpt.yaml"


@pytest.fixture(scope="module")
def gpt_task(cache_dir: Path) -> Task:
    return load_task("gpt")


@pytest.fixture(scope="module")
def quick_task(gpt_task: Task) -> Task:
    """The task with 32 of its validation blocks, so that each evaluation takes a fraction of a
    second in a test."""
    return dataclasses.replace(gpt_task, validation=(gpt_task.validation[0][:32],))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Train on one thread: on a shared 2-core machine two threads wait on each other at every
    elementwise op whenever the other core is busy (measured 100x slower); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_gpt_data_is_real_text_in_byte_blocks(gpt_task: Task, cache_dir: Path) -> None:
    (train,), (validation,) = gpt_task.train, gpt_task.validation
    assert train.dtype == torch.int64 and train.shape[1] == 128
    assert validation.shape == (gpt_module.NUM_VALIDATION, 128)
    # 1.46 MB of text: the speeches, the debates and Hamlet, in 128-byte blocks
    assert 11_000 <= train.shape[0] + validation.shape[0] <= 11_600
    assert 0 <= int(train.min()) and int(train.max()) < gpt_module.VOCAB_SIZE
    text = bytes(torch.cat([train.flatten(), validation.flatten()]).tolist()).decode(
        "utf-8", errors="replace"
    )
    for phrase in ("Romney", "Obama", "TRUMP:", "HAMLET", "To be, or not to be"):
        assert phrase in text
    # the split is a partition of the text's blocks: no block is in both
    n = train.shape[0] + validation.shape[0]
    train_idx, val_idx = gpt_module.split_indices(n, gpt_module.NUM_VALIDATION, 0)
    assert sorted(torch.cat([train_idx, val_idx]).tolist()) == list(range(n))
    assert list(cache_dir.glob("gpt_bytes_block128_*.pt")), "the blocks were not cached"


def test_gpt_metric_is_a_loss_to_lower(gpt_task: Task) -> None:
    assert gpt_task.metric == "val_loss"
    assert gpt_task.higher_is_better is False
    assert gpt_task.predict is None and gpt_task.evaluate is gpt_module.gpt_evaluate
    assert gpt_task.target < math.log(gpt_module.VOCAB_SIZE)
    assert gpt_task.info["parameters"] == 842_496


def test_gpt_tiny_model_size_and_initial_loss(quick_task: Task, one_thread: None) -> None:
    torch.manual_seed(0)
    model = quick_task.build_model()
    params = sum(p.numel() for p in model.parameters())
    assert params == gpt_module.count_parameters(gpt_module.SIZES["tiny"], 128) == 842_496
    # random init: logits near zero, so the loss is that of a uniform guess over 256 bytes
    initial = evaluate_metric(quick_task, model, CPU)
    assert abs(initial - math.log(256)) < 0.1
    # the training loss of a batch agrees with the per-byte validation loss on the same blocks
    batch = [t[:8] for t in quick_task.validation]
    with torch.no_grad():
        loss = quick_task.loss(model, batch)
        direct = gpt_module.gpt_evaluate(model, [batch])
    assert loss.ndim == 0
    assert float(loss) == pytest.approx(direct, rel=1e-4)


def test_gpt_small_size_matches_its_count(cache_dir: Path) -> None:
    shape = gpt_module.SIZES["small"]
    model = gpt_module.build_gpt(shape, 64)
    assert sum(p.numel() for p in model.parameters()) == gpt_module.count_parameters(shape, 64)


def test_gpt_baseline_trial_lowers_the_validation_loss(quick_task: Task, one_thread: None) -> None:
    """A real baseline trial: the validation loss starts near ln 256 and falls below 4.5 (a
    target in the metric's downward direction) within 60 optimizer steps."""
    recipe = baseline_recipe(quick_task.default_batch_size, quick_task.default_lr)
    limits = TrialLimits(
        max_train_seconds=60.0, eval_every_seconds=0.3, target=4.5, higher_is_better=False,
        max_steps=60,
    )
    result = run_trial(quick_task, recipe, limits, device="cpu")
    losses = [metric for _, metric in result.curve]
    assert result.status == objective.REACHED, result.message
    assert len(losses) >= 2 and losses[0] > 4.5 >= losses[-1]
    assert result.best_metric == min(losses)
    assert result.tta_seconds is not None and result.steps < 60


def test_gpt_space_holds_the_baseline(gpt_task: Task) -> None:
    space = load_space(SPACE)
    baseline = baseline_recipe(gpt_task.default_batch_size, gpt_task.default_lr)
    point = space.point_for(baseline)
    assert point["batch_size"] == 16 and point["lr"] == pytest.approx(1e-3)
    assert point["precision"] == "fp32"


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"size": "huge"}, "size must be one of tiny, small, gpt2"),
        ({"block_size": 8}, "block_size must be an integer from 16 to 1024"),
        ({"block_size": "128"}, "block_size must be an integer"),
    ],
)
def test_gpt_options_are_checked(options: dict[str, object], fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        load_task("gpt", options=options)


@pytest.mark.slow
def test_gpt2_size_matches_its_count() -> None:
    """GPT-2 small's shape (the GPU default): 85.4M parameters with the byte vocabulary."""
    shape = gpt_module.SIZES["gpt2"]
    model = gpt_module.build_gpt(shape, 128)
    count = sum(p.numel() for p in model.parameters())
    assert count == gpt_module.count_parameters(shape, 128) == 85_350_912
