"""Knowledge distillation (``distill_weight``, ``distill_temperature``): the loss, the step that
takes it in every caller, the frozen teacher, its one-time cached training, the errors for a
task without a teacher, the memory prediction, the default space and the exports."""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autotune.apply import configure
from autotune.cli import main
from autotune.default_space import default_space
from autotune.errors import UserError
from autotune.estimate import grid_recipes
from autotune.export import hf_unsupported, torchrun_command
from autotune.knobs import (
    DistillError,
    distillation_loss,
    distillation_term,
    load_teacher,
)
from autotune.memory import TraceCache, estimate_recipes, predict_peak
from autotune.recipe import Recipe
from autotune.space import parse_space
from autotune.tasks import Task, check_teacher, load_task, teachers
from autotune.tasks.teachers import TeacherSpec, trained_teacher
from autotune.train import TrialLimits, run_trial
from autotune.train.parallel import prepare
from tests.toy_task import make_toy_task

CPU = torch.device("cpu")
DIM = 16
TEACHER_SPEC = TeacherSpec(name="mlp", config={"hidden": 256}, epochs=3, batch_size=32, lr=1e-2)


def _teacher_net() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, 256), nn.ReLU(), nn.Linear(256, 2))


def _outputs(model: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(batch[0])
    return F.cross_entropy(logits.float(), batch[1]), logits


def _task_with_teacher(calls: list[int] | None = None) -> Task:
    """The toy task with a teacher: a wider MLP trained once on its training data (cached)."""
    task = make_toy_task()

    def teacher() -> nn.Module:
        if calls is not None:
            calls.append(1)
        return trained_teacher("toy", TEACHER_SPEC, _teacher_net, task.train, task.loss)

    return dataclasses.replace(task, teacher=teacher, outputs=_outputs)


@pytest.fixture(autouse=True)
def teacher_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test has its own empty cache folder, and no teacher already read."""
    path = tmp_path / "cache"
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(path))
    monkeypatch.setattr(teachers, "_LOADED", {})
    return path


def _batch(n: int = 32) -> list[torch.Tensor]:
    task = make_toy_task()
    return [t[:n] for t in task.train]


def _kl_by_hand(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """T^2 x mean over rows of sum_c p_teacher (log p_teacher - log p_student), from softmax."""
    p_t = torch.softmax(teacher / t, dim=-1)
    p_s = torch.softmax(student / t, dim=-1)
    return t * t * (p_t * (p_t.log() - p_s.log())).sum(-1).mean()


# -- the loss ---------------------------------------------------------------------------------


def test_weight_one_is_t_squared_kl_and_a_mix_is_the_weighted_sum() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(DIM, 2), nn.Linear(DIM, 2)
    batch = _batch()
    s_logits, t_logits = student(batch[0]), teacher(batch[0])
    kl = _kl_by_hand(s_logits, t_logits, 3.0)
    full = distillation_loss(_outputs, teacher, Recipe(distill_weight=1.0,
                                                       distill_temperature=3.0))
    torch.testing.assert_close(full(student, batch), kl)
    ce = F.cross_entropy(s_logits, batch[1])
    mixed = distillation_loss(_outputs, teacher, Recipe(distill_weight=0.3,
                                                        distill_temperature=3.0))
    torch.testing.assert_close(mixed(student, batch), 0.7 * ce + 0.3 * kl)
    # Token tasks give (rows, classes) or (batch, tokens, classes): averaged over rows either way.
    torch.testing.assert_close(
        distillation_term(s_logits.reshape(4, 8, 2), t_logits.reshape(4, 8, 2), 3.0), kl)


def test_the_distillation_term_is_zero_for_the_same_logits_and_rejects_other_shapes() -> None:
    logits = torch.randn(8, 5)
    assert float(distillation_term(logits, logits.clone(), 2.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(DistillError, match="same classes"):
        distillation_term(logits, torch.randn(8, 4), 2.0)


def test_weight_zero_trains_exactly_as_plain_and_never_loads_the_teacher() -> None:
    calls: list[int] = []
    task = _task_with_teacher(calls)
    recipe = Recipe(batch_size=32, lr=1e-2)
    micro = [_batch()]
    torch.manual_seed(0)
    prepared = prepare(task.build_model(), recipe, CPU, load_teacher(task, recipe))
    torch.manual_seed(0)
    plain = prepare(make_toy_task().build_model(), recipe, CPU)
    for _ in range(5):
        prepared.step(task, micro)
        plain.step(make_toy_task(), micro)
    for a, b in zip(prepared.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert calls == [] and prepared.teacher is None


def test_the_step_takes_the_distillation_gradient() -> None:
    """Plain SGD moves each weight by lr x gradient: the trial's step must move them by the
    gradient of (1 - w) CE + w T^2 KL, computed here by hand (scale-sensitive, see STYLE 17)."""
    task = _task_with_teacher()
    recipe = Recipe(batch_size=32, lr=0.5, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                    distill_weight=0.4, distill_temperature=2.0)
    teacher = load_teacher(task, recipe)
    batch = _batch()
    torch.manual_seed(0)
    model = task.build_model()
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    logits = model(batch[0])
    with torch.no_grad():
        t_logits = teacher(batch[0])
    loss = 0.6 * F.cross_entropy(logits, batch[1]) + 0.4 * _kl_by_hand(logits, t_logits, 2.0)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for (name, _), g in zip(model.named_parameters(), grads, strict=True):
        expected[name] -= 0.5 * g
    prepared = prepare(model, recipe, CPU, teacher)
    prepared.step(task, [batch])
    for name, p in prepared.model.named_parameters():
        torch.testing.assert_close(p, expected[name])


def test_the_teacher_is_frozen_outside_the_optimizer_and_runs_inside_the_step() -> None:
    # A teacher function that returns a trainable module in training mode: autotune freezes it.
    task = dataclasses.replace(_task_with_teacher(), teacher=_teacher_net)
    recipe = Recipe(batch_size=32, accumulation_steps=2, distill_weight=0.5)
    teacher = load_teacher(task, recipe)
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    forwards: list[bool] = []
    teacher.register_forward_hook(lambda m, i, o: forwards.append(torch.is_grad_enabled()))
    torch.manual_seed(0)
    prepared = prepare(task.build_model(), recipe, CPU, teacher)
    assert prepared.teacher is teacher and not teacher.training
    in_optimizer = {id(p) for g in prepared.optimizer.param_groups for p in g["params"]}
    assert all(id(p) not in in_optimizer and not p.requires_grad for p in teacher.parameters())
    for _ in range(3):
        prepared.step(task, [_batch(), _batch()])
    assert forwards == [False] * 6  # one forward per micro-batch, without gradients
    for name, p in teacher.named_parameters():
        assert torch.equal(p, before[name]) and p.grad is None


def test_configure_distils_with_the_given_teacher_and_refuses_without_one() -> None:
    task = _task_with_teacher()
    recipe = Recipe(batch_size=32, lr=0.5, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                    distill_weight=0.5)
    teacher = load_teacher(task, recipe)
    torch.manual_seed(0)
    trial_side = prepare(task.build_model(), recipe, CPU, teacher)
    trial_side.step(task, [_batch()])
    torch.manual_seed(0)
    run = configure(recipe, task.build_model(), device="cpu", teacher=teacher)
    run.step([_batch()], _outputs)
    for a, b in zip(run.model.parameters(), trial_side.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(UserError, match="pass the trained teacher"):
        configure(recipe, task.build_model(), device="cpu")
    with pytest.raises(UserError, match="does not distil"):
        configure(Recipe(), task.build_model(), device="cpu", teacher=teacher)


# -- the teacher: trained once, cached, deterministic, safe to ask for at once ---------------


def test_a_teacher_is_trained_once_then_read_from_the_cache(caplog, teacher_cache: Path) -> None:
    task = make_toy_task()
    with caplog.at_level(logging.WARNING, logger=teachers.__name__):
        first = trained_teacher("toy", TEACHER_SPEC, _teacher_net, task.train, task.loss)
    trained = [r for r in caplog.records if "trained the distillation teacher" in r.message]
    assert len(trained) == 1
    path = teachers.teacher_path("toy", TEACHER_SPEC, task.train)
    record = teachers.teacher_record(path)
    assert path.parent == teacher_cache / "teachers" and record is not None
    assert record.steps == 3 * (384 // 32) and record.train_seconds > 0
    stamp = path.stat().st_mtime_ns
    teachers._LOADED.clear()  # a new process: only the file remains
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=teachers.__name__):
        second = trained_teacher("toy", TEACHER_SPEC, _teacher_net, task.train, task.loss)
    assert not caplog.records and path.stat().st_mtime_ns == stamp  # read, not retrained
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not second.training and not any(p.requires_grad for p in second.parameters())
    # Other data or another spec: another teacher.
    other = dataclasses.replace(TEACHER_SPEC, epochs=4)
    assert teachers.teacher_path("toy", other, task.train) != path
    assert teachers.teacher_path("toy", TEACHER_SPEC, (task.train[0] + 1, task.train[1])) != path


def test_two_callers_at_once_train_one_deterministic_teacher(caplog, tmp_path,
                                                            monkeypatch) -> None:
    task = make_toy_task()
    results: list[nn.Module] = []

    def ask() -> None:
        results.append(trained_teacher("toy", TEACHER_SPEC, _teacher_net, task.train, task.loss))

    with caplog.at_level(logging.WARNING, logger=teachers.__name__):
        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 2
    assert sum("trained the distillation teacher" in r.message for r in caplog.records) == 1
    assert not list(teachers.teacher_path("toy", TEACHER_SPEC, task.train).parent.glob("*.tmp"))
    # Deterministic: trained again from nothing elsewhere, the same weights.
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setattr(teachers, "_LOADED", {})
    again = trained_teacher("toy", TEACHER_SPEC, _teacher_net, task.train, task.loss)
    for a, b in zip(results[0].parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


# -- trials, errors -------------------------------------------------------------------------


def test_a_trial_with_distillation_trains_reports_and_predicts_its_memory() -> None:
    calls: list[int] = []
    task = _task_with_teacher(calls)
    recipe = Recipe(batch_size=32, lr=1e-2, distill_weight=0.5, distill_temperature=2.0)
    result = run_trial(task, recipe, TrialLimits.for_task(task, max_train_seconds=3.0))
    assert result.status == "reached", result.message
    assert result.tta_seconds is not None and result.steps > 0
    assert calls  # the teacher was asked for, during setup
    # The measured CPU peak (teacher tracked) is what the trace predicted.
    assert result.predicted_peak_bytes and abs(result.prediction_error) < 0.05, result


def test_a_recipe_that_distils_on_a_task_without_a_teacher_is_infeasible() -> None:
    task = make_toy_task()
    result = run_trial(task, Recipe(batch_size=32, distill_weight=0.5),
                       TrialLimits.for_task(task, max_train_seconds=1.0))
    assert result.status == "infeasible"
    assert "needs a teacher, but task 'toy' has no teacher" in result.message
    assert result.steps == 0


def test_a_search_that_can_distil_a_task_without_a_teacher_stops_at_the_start(
        tmp_path, capsys) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  distill_weight: {choices: [0.0, 0.5]}\n")
    results = tmp_path / "run"
    code = main(["search", "--model", "tests.toy_task:make_task", "--space", str(space),
                 "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "distill_weight can be > 0 in this search, but task 'toy' has no teacher" in err
    assert "Traceback" not in err and not (results / "trials.jsonl").exists()


def test_check_teacher_builds_the_teacher_and_compares_its_logits() -> None:
    task = _task_with_teacher()
    check_teacher(task, 32)  # trains and caches it, once, before any trial
    assert teachers.teacher_path("toy", TEACHER_SPEC, task.train).exists()
    wrong = dataclasses.replace(task, teacher=lambda: nn.Linear(DIM, 3))
    with pytest.raises(UserError, match=r"teacher's logits have shape \(32, 3\)"):
        check_teacher(wrong, 32)
    summed = dataclasses.replace(task, outputs=lambda m, b: (_outputs(m, b)[0] * 32,
                                                             _outputs(m, b)[1]))
    with pytest.raises(UserError, match="outputs must return the task's own loss"):
        check_teacher(summed, 32)


def test_pipeline_cannot_distil() -> None:
    with pytest.raises(Exception, match="distillation is not supported with parallelism "
                                        "pipeline"):
        Recipe(distill_weight=0.5, parallelism="pipeline", workers=2)


# -- memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["single", "ddp", "fsdp", "zero2"])
def test_the_memory_prediction_includes_the_teacher(mode: str) -> None:
    task = _task_with_teacher()
    teacher_bytes = sum(p.numel() * 4 for p in _teacher_net().parameters())
    base = Recipe(batch_size=32) if mode == "single" else \
        Recipe(batch_size=32, parallelism=mode, workers=2)
    cache = TraceCache()
    plain = predict_peak(task, base, cache=cache)
    distil = predict_peak(task, base.replace(distill_weight=0.5), cache=cache)
    assert distil.parameters_bytes - plain.parameters_bytes == teacher_bytes
    # Its forward pass (no gradients) adds activations on top of its weights.
    assert distil.activations_bytes > plain.activations_bytes
    assert distil.peak_bytes > plain.peak_bytes + teacher_bytes


def test_autotune_estimate_counts_the_teacher_and_names_a_task_without_one() -> None:
    # The grid takes the space's hungriest setting: with the teacher.
    space = parse_space("knobs:\n  batch_size: {choices: [16, 32]}\n"
                        "  distill_weight: {choices: [0.0, 0.5]}\n")
    grid = grid_recipes(space, Recipe(), [1])
    assert len(grid) == 2 and all(r.distill_weight == 0.5 for r in grid)
    rows = estimate_recipes(make_toy_task(), [Recipe(distill_weight=0.5)], None)
    assert "has no teacher" in rows[0]["unsupported"] and "prediction" not in rows[0]


# -- spaces, exports --------------------------------------------------------------------------


def test_the_default_space_searches_distillation_only_for_a_task_with_a_teacher() -> None:
    args = dict(bf16_fast=False, source="toy")
    assert "distill_weight" not in default_space(Recipe(), "cpu", **args).names
    space = default_space(Recipe(), "cpu", teacher=True, **args)
    assert space.knob("distill_weight").choices == (0.0, 0.5)
    assert space.knob("distill_temperature").when == (("distill_weight", (0.5,)),)


def test_exports_say_that_they_have_no_distillation() -> None:
    recipe = Recipe(distill_weight=0.5, distill_temperature=4.0)
    notes = [n for n in hf_unsupported(recipe) if n.startswith("distill_weight 0.5")]
    assert len(notes) == 1 and "compute_loss" in notes[0] and "T=4" in notes[0]
    assert "distillation from a frozen teacher" in torchrun_command(recipe)
    assert not [n for n in hf_unsupported(Recipe()) if "distill" in n]


@pytest.mark.slow
def test_the_mnist_teacher_beats_the_target_and_is_cached(teacher_cache: Path) -> None:
    task = load_task("mnist")
    teacher = task.teacher()
    path = next((teacher_cache / "teachers").glob("mnist-wide-cnn-*.pt"))
    record = teachers.teacher_record(path)
    assert record is not None and record.metric is not None and record.metric >= task.target
    with torch.no_grad():
        acc = float((teacher(task.validation[0]).argmax(-1) == task.validation[1]).float().mean())
    assert acc == pytest.approx(record.metric)
    result = run_trial(task, Recipe(distill_weight=0.5),
                       TrialLimits.for_task(task, max_train_seconds=3.0))
    assert result.status in ("reached", "not_reached"), result.message
    assert abs(result.prediction_error) < 0.05
