"""``autotune estimate``: predicted memory of a space's combinations, without training."""

from __future__ import annotations

import pytest

from autotune.cli import main


def table_rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("precision"))
    return [line.split() for line in lines[start + 1:] if line and line.split()[0] in (
        "fp32", "bf16", "fp16")]


def test_user_task_without_a_space_gets_the_default_grid(capsys):
    code = main(["estimate", "--model", "tests.user_task:make_task", "--budget", "1MB",
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "default grid" in out
    rows = table_rows(out)
    # fp32/bf16/fp16 x half, once and twice the task's batch size (32), one device each.
    assert {(r[0], r[1]) for r in rows} == {(p, b) for p in ("fp32", "bf16", "fp16")
                                            for b in ("16", "32", "64")}
    assert all(r[2] == "single" and r[-1] == "yes" for r in rows)
    assert "9 of 9 combinations fit the budget of 1MB" in out


def test_bert_space_marks_what_fits_and_checkpointing_helps(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(
        "knobs:\n"
        "  precision: {choices: [fp32]}\n"
        "  batch_size: {choices: [16, 128]}\n"
        "  checkpointing: {choices: [false, true]}\n"
        "  optimizer: {choices: [sgd, adamw]}\n"
    )
    code = main(["estimate", "--model", "bert", "--space", str(space), "--budget", "200MiB",
                 "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "optimizer adamw" in out  # the most memory-hungry optimizer of the space
    rows = {(r[1], r[4]): r for r in table_rows(out)}  # (batch, ckpt)
    assert set(rows) == {("16", "no"), ("16", "yes"), ("128", "no"), ("128", "yes")}
    assert rows[("16", "no")][-1] == "yes" and rows[("128", "no")][-1] == "NO"
    assert rows[("128", "yes")][-1] == "yes"  # checkpointing makes the large batch fit


def test_parallel_modes_are_listed_per_worker_count(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(
        "knobs:\n"
        "  precision: {choices: [fp32, fp16]}\n"
        "  parallelism: {choices: [single, fsdp, zero2]}\n"
        "  offload: {choices: [false, true], when: {parallelism: zero2}}\n"
    )
    code = main(["estimate", "--model", "mnist", "--space", str(space), "--workers", "2",
                 "--workers", "4", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = table_rows(out)
    modes = {(r[0], r[2], r[3]) for r in rows}
    assert ("fp32", "single", "1") in modes and ("fp32", "fsdp", "4") in modes
    assert ("fp32", "zero2", "2") in modes
    fp16_zero = [r for r in rows if r[0] == "fp16" and r[2] == "zero2"]
    assert fp16_zero and all("n/a:" in " ".join(r) for r in fp16_zero)  # not on a CPU


@pytest.mark.parametrize(("args", "needle"), [
    (["estimate", "--model", "gpt9"], "unknown task 'gpt9'"),
    (["estimate", "--model", "mnist", "--budget", "16XB"], "unknown unit 'XB'"),
    (["estimate", "--model", "mnist", "--workers", "0"], "--workers must be >= 1"),
    (["estimate", "--model", "mnist", "--space", "nope.yaml"], "file not found"),
])
def test_bad_input_exits_2_with_one_message(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
