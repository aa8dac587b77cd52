"""A broken user task stops the search before any trial, with one paragraph naming what failed
(exit code 2, no traceback, no trial run)."""

import pytest

from autotune.cli import main

CASES = {
    "wrong_input_size": "loss(model, batch) on 32 training examples raised RuntimeError",
    "too_few_examples": "has 30 training examples, fewer than its baseline batch size 32",
    "nan_loss": "loss(model, batch) is nan on the first training batch",
    "vector_loss": "must return a scalar tensor, got Tensor of shape (32,)",
    "broken_metric": "its metric fails on the first validation batch: the task's evaluate "
                     "function tests.toy_task.make_loss_task.<locals>.val_loss raised KeyError",
    "broken_predict": "measuring its metric (accuracy) on the first validation batch raised",
    "not_a_task": "the function returned dict, not an autotune.tasks.Task",
    "raises": "its function raised FileNotFoundError: data/train.csv",
    "ragged_without_collate": "torch's default_collate (no collate given) on the first 32 "
                              "training samples raised RuntimeError",
    "collate_raises": "collate on the first 32 training samples raised ValueError: padding "
                      "token not set. The samples cannot be made into one batch",
    "unreadable_samples": "reading training sample 0 (the Dataset's __getitem__) raised "
                          "FileNotFoundError: images/0.png",
    "dataset_too_small": "has 30 training examples, fewer than its baseline batch size 32",
    "iterable_dataset": "train is an IterableDataset; autotune needs a map-style Dataset",
}


@pytest.mark.parametrize("factory", sorted(CASES))
def test_a_broken_task_stops_the_search_before_any_trial(factory, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  lr: {choices: [0.01, 0.001]}\n")
    results = tmp_path / "run"
    code = main(["search", "--model", f"tests.bad_tasks:{factory}", "--space", str(space),
                 "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert CASES[factory] in err, err
    assert "Traceback" not in err
    assert not (results / "trials.jsonl").exists()  # no trial ran
