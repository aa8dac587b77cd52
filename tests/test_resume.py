"""Interrupting a real search (SIGTERM, as a scheduler or `kill` would) and resuming it."""

import json
import signal
import subprocess
import sys
import time

from autotune import objective
from autotune.cli import main
from autotune.recipe import Recipe

SPACE = """\
knobs:
  batch_size: {choices: [16, 32, 64]}
  lr: {low: 1.0e-3, high: 3.0e-2, log: true}
"""


def _records(results):
    return [json.loads(line) for line in (results / "trials.jsonl").read_text().splitlines()]


def test_sigterm_then_resume_runs_only_what_is_left(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    results = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "search", "--model", "tests.toy_task:make_task",
         "--space", str(space), "--target", "1.01", "--trials", "5", "--max-trial-time", "2s",
         "--results-dir", str(results)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    for line in proc.stdout:
        if line.startswith("[  3/5] running"):
            break
    time.sleep(1.0)  # trial 3 trains now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert f"autotune search --resume {results}" in err
    before = _records(results)
    assert [r["status"] for r in before] == [objective.NOT_REACHED] * 2 + [objective.INTERRUPTED]
    interrupted = before[2]

    code = main(["search", "--resume", str(results)])
    out = capsys.readouterr().out
    assert code == 2  # target 1.01 is unreachable: every trial is measured, none reaches it
    assert "resuming the search" in out and "2 of 5 trials finished" in out
    after = _records(results)
    new = after[len(before):]
    # finished trials were not run again; the interrupted one ran again; 5 finished in all
    assert len(new) == 3
    assert [r["trial"] for r in new] == [3, 4, 5]
    assert new[0]["params"] == interrupted["params"]
    assert all(r["status"] == objective.NOT_REACHED for r in new)
    first_ids = {r["trial_id"] for r in before[:2]}
    assert not first_ids & {r["trial_id"] for r in new}
    saved = json.loads((results / "search_args.json").read_text())
    assert len(saved["sessions"]) == 2 and all("ended_at" in s for s in saved["sessions"])

    # a resumed search that is already complete runs nothing more
    assert main(["search", "--resume", str(results)]) == 2
    assert len(_records(results)) == len(after)


def test_resumed_sampler_starts_from_the_finished_trials(tmp_path):
    """Optuna's history is kept: the finished trials are in the new study, with their scores."""
    from autotune.search import SearchConfig
    from autotune.search._tune import _make_searcher
    from autotune.space import parse_space

    space = parse_space(SPACE)
    config = SearchConfig(model="tests.toy_task:make_task", space=space, baseline=Recipe(),
                          target=0.9, max_train_seconds=2.0, results_dir=tmp_path, trials=5)
    done = [
        {"params": {"batch_size": 32, "lr": 0.01}, "score": 1.5, "status": objective.REACHED},
        {"params": {"batch_size": 64, "lr": 0.002}, "score": 4.4,
         "status": objective.NOT_REACHED},
    ]
    searcher = _make_searcher(config, [], time.time(), done)
    trials = searcher._ot_study.trials
    assert [t.params for t in trials] == [d["params"] for d in done]
    assert [t.value for t in trials] == [1.5, 4.4]
    assert searcher._ot_study.best_params == {"batch_size": 32, "lr": 0.01}


def test_resume_of_a_directory_without_a_search_says_so(tmp_path, capsys):
    assert main(["search", "--resume", str(tmp_path)]) == 2
    assert "search_args.json" in capsys.readouterr().err
