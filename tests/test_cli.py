"""User mistakes get one clear paragraph and exit code 2, never a traceback."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def run(*args):
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["search", "--model", "mnist", "--budget", "16XB"], "unknown unit 'XB'"),
        (["search", "--model", "mnist", "--budget", "-1GB"], "positive memory size"),
        (["search", "--model", "mnist", "--time-budget", "soon"], "--time-budget"),
        (["search", "--model", "mnist", "--trials", "0"], "--trials must be >= 1"),
        (["search", "--model", "gpt9"], "unknown task 'gpt9'"),
        (["search", "--model", "gpt9", "--space", "search_spaces/bert.yaml"], "unknown task"),
        (["search", "--model", "mnist", "--space", "nope.yaml"], "file not found"),
        (["search", "--model", "no_such_pkg.mod:make", "--space", "search_spaces/mnist.yaml"],
         "no_such_pkg"),
        (["search", "--model", "mnist", "--task-option", "size"], "KEY=VALUE"),
        (["train", "--recipe", "nope.yaml", "--model", "mnist"], "file not found"),
    ],
)
def test_user_mistakes_exit_2_with_a_message(args, needle, capsys):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err, err
    assert "Traceback" not in err


def test_invalid_space_file_lists_every_problem(tmp_path, capsys):
    bad = tmp_path / "space.yaml"
    bad.write_text("knobs:\n  precision: {choices: [fp8]}\n  batch_size: {low: 9, high: 1}\n")
    assert main(["search", "--model", "mnist", "--space", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "2 problems" in err and "line 2" in err and "line 3" in err


def test_invalid_recipe_file(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("precision: fp16\noffload: true\nbatch_size: big\n")
    assert main(["train", "--recipe", str(bad), "--model", "mnist"]) == 2
    err = capsys.readouterr().err
    # The type error and the cross-knob rule (offload needs a ZeRO mode) are listed together.
    assert "batch_size: expected int" in err
    assert "offload: CPU offload applies only to the ZeRO modes" in err
    assert "2 problems" in err, err


def test_help_explains_each_option():
    top = run("--help")
    assert top.returncode == 0 and "search" in top.stdout and "train" in top.stdout
    search = run("search", "--help")
    assert search.returncode == 0
    for flag in ("--model", "--budget", "--space", "--trials", "--time-budget", "--target",
                 "--seed", "--output", "--results-dir"):
        assert flag in search.stdout
    assert "baseline" in search.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "search" in capsys.readouterr().out


def test_train_applies_a_recipe_file_and_compares_with_its_claim(tmp_path, capsys):
    import yaml

    from autotune.recipe import Recipe

    path = tmp_path / "best_recipe.yaml"
    path.write_text(yaml.safe_dump({"recipe": Recipe(lr=1e-2).to_dict(),
                                    "measured": {"tta_seconds": 0.05}}))
    assert main(["train", "--recipe", str(path), "--model", "tests.toy_task:make_task"]) == 0
    out = capsys.readouterr().out
    assert "time-to-target" in out and "claims 0.1s" in out and "ratio measured/claimed" in out


def test_train_reports_a_recipe_that_misses_the_target(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("lr: 1.0e-9\noptimizer: sgd\n")
    code = main(["train", "--recipe", str(path), "--model", "tests.toy_task:make_task",
                 "--max-trial-time", "0.5s"])
    assert code == 3  # as a search in which nothing reached the target
    assert "no time-to-target: not_reached" in capsys.readouterr().out


def test_train_refuses_a_recipe_the_device_cannot_run(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("parallelism: zero2\nworkers: 2\nprecision: fp16\n")
    code = main(["train", "--recipe", str(path), "--model", "tests.toy_task:make_task",
                 "--device", "cpu"])
    assert code == 2
    assert "DeepSpeed does not support fp16 on the CPU" in capsys.readouterr().err


def documented_commands() -> list[tuple[str, str]]:
    """Every ``autotune ...`` line in the code blocks of README.md and docs/*.md, with its file;
    comments dropped, continuation lines joined, ``[optional parts]`` kept."""
    found = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("#")[0].strip()
                if line.startswith("autotune "):
                    found.append((path.name, re.sub(r"\[([^\]]*)\]", r"\1", line)))
    return found


def test_documented_commands_are_found():
    assert len(documented_commands()) >= 10


@pytest.mark.parametrize(("doc", "line"), documented_commands())
def test_every_documented_command_parses(doc, line):
    args = shlex.split(line)[1:]
    if "--help" in args or "--version" in args:
        return
    try:
        build_parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{line}` is not a valid command (exit {exc.code})")


def test_the_readme_documents_every_exit_code():
    """README's table and ``autotune.cli._exit`` say the same (the codes themselves are tested
    where they happen: 0 and the -q output in test_tracking.py, 3 and 130 in test_progress.py,
    2 above)."""
    from autotune.cli import _exit

    table = REPO.joinpath("README.md").read_text().split("| exit code |")[1].split("\n\n")[0]
    documented = {int(m) for m in re.findall(r"^\| `(\d+)` \|", table, re.M)}
    codes = {v for k, v in vars(_exit).items() if k.startswith("EXIT_")}
    assert documented == codes == {0, 1, 2, 3, 130}
