"""The kernel-level knobs really act, and say so where they cannot: ``fused_optimizer`` (which
torch implementation steps the optimizer), ``channels_last`` (the memory format of convolution
weights and 4-D inputs), ``tf32`` (TF32 matmuls: CUDA only, infeasible on a CPU). Each knob
changes how the step runs, never what it computes, so each test also checks the result against
the plain recipe's. The ``gpu`` test runs the same paths on CUDA where TF32 exists."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autotune import configure, objective
from autotune.errors import UserError
from autotune.knobs import (
    build_optimizer,
    channels_last_batch,
    inactive_knobs,
    optimizer_step,
    set_tf32,
    tf32_enabled,
    to_channels_last,
    unsupported_reason,
)
from autotune.recipe import Recipe
from autotune.train import TrialLimits, run_trial
from autotune.train.parallel import prepare
from tests.toy_task import make_toy_task

CL = torch.channels_last


@pytest.fixture(autouse=True)
def _keep_tf32_setting():
    """``tf32`` is process-wide: leave the process as the test found it."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# -- fused_optimizer --------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("impl", ["default", "foreach", "fused"])
def test_fused_optimizer_selects_torchs_implementation(optimizer, impl):
    opt = build_optimizer(nn.Linear(4, 2).parameters(),
                          Recipe(optimizer=optimizer, fused_optimizer=impl))
    expected = {"foreach": None, "fused": None}
    if impl != "default":
        expected[impl] = True
    assert {k: opt.defaults[k] for k in expected} == expected


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_every_implementation_takes_the_same_steps(optimizer, precision):
    """Three steps of each implementation from the same start: the same weights, up to float
    rounding (fp16 goes through the loss scaler, which a fused optimizer reads itself)."""
    task = make_toy_task()
    batches = [[t[i * 32:(i + 1) * 32] for t in task.train] for i in range(3)]
    results = {}
    for impl in ("default", "foreach", "fused"):
        torch.manual_seed(0)
        model = task.build_model()
        recipe = Recipe(optimizer=optimizer, fused_optimizer=impl, precision=precision,
                        lr=0.05, momentum=0.9)
        opt = build_optimizer(model.parameters(), recipe)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if precision == "fp16" else None
        for batch in batches:
            optimizer_step(model, task.loss, [batch], opt, None, recipe, "cpu", scaler=scaler)
        if scaler is not None:
            assert scaler.get_scale() == 2.0**10  # no step was skipped
        results[impl] = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.manual_seed(0)
    start = torch.cat([p.detach().flatten() for p in task.build_model().parameters()])
    assert (results["default"] - start).abs().max() > 1e-2  # the steps moved the weights
    for impl in ("foreach", "fused"):
        torch.testing.assert_close(results[impl], results["default"], rtol=1e-5, atol=1e-6)


def test_fused_sgd_under_fsdp_is_infeasible_and_fused_adam_is_not():
    """torch has no DTensor version of its fused SGD kernel (it raises in FSDP2's step)."""
    fsdp = dict(parallelism="fsdp", workers=2, fused_optimizer="fused")
    assert "fused SGD" in unsupported_reason(Recipe(optimizer="sgd", **fsdp), "cuda")
    assert unsupported_reason(Recipe(optimizer="adamw", **fsdp), "cuda") is None
    assert unsupported_reason(Recipe(optimizer="sgd", parallelism="ddp", workers=2,
                                     fused_optimizer="fused"), "cpu") is None


def test_fused_optimizer_is_inactive_under_deepspeeds_cpu_adam():
    recipe = Recipe(parallelism="zero2", workers=2, offload=True, fused_optimizer="fused")
    (line,) = inactive_knobs(recipe, nn.Linear(2, 2), torch.device("cpu"))
    assert line.startswith("fused_optimizer:")
    assert inactive_knobs(recipe.replace(optimizer="sgd"), nn.Linear(2, 2),
                          torch.device("cpu")) == []


# -- channels_last ----------------------------------------------------------------------------


class ConvNet(nn.Module):
    """Three input channels (with one, NCHW and NHWC strides coincide) and a flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8 * 6 * 6, 2)
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.is_contiguous(memory_format=CL))
        return self.head(torch.relu(self.conv(x)).flatten(1))


def _conv_batch() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 2, (16,), generator=g)]


def _loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def test_channels_last_converts_conv_weights_and_inputs_and_steps_the_same():
    results = {}
    for flag in (False, True):
        torch.manual_seed(0)
        model = ConvNet()
        recipe = Recipe(channels_last=flag, optimizer="sgd", lr=0.1, momentum=0.0)
        prepared = prepare(model, recipe, torch.device("cpu"))
        assert prepared.channels_last is flag and prepared.inactive == []
        assert model.conv.weight.is_contiguous(memory_format=CL) is flag
        prepared.step(_task_like(), [_conv_batch()])
        assert model.seen == [flag]  # the step's input was converted (only) with the knob
        assert model.conv.weight.is_contiguous(memory_format=CL) is flag  # kept after the step
        results[flag] = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(results[True], results[False], rtol=1e-5, atol=1e-6)


def _task_like():
    """What ``Prepared.step`` reads of a task: its loss."""
    class _T:
        loss = staticmethod(_loss)
    return _T()


class ViewMLP(nn.Module):
    """No convolution, and a ``view`` of its 4-D input, which fails on a channels-last tensor:
    the knob must leave such a model (and its inputs) alone."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(x.shape[0], -1))


def test_channels_last_is_a_recorded_no_op_without_convolutions():
    with pytest.raises(RuntimeError):  # what converting its input would do
        ViewMLP()(channels_last_batch(_conv_batch())[0])
    model = ViewMLP()
    prepared = prepare(model, Recipe(channels_last=True), torch.device("cpu"))
    assert prepared.channels_last is False
    (line,) = prepared.inactive
    assert line.startswith("channels_last:") and "no 4-D weights" in line
    prepared.step(_task_like(), [_conv_batch()])  # trains as without the knob
    run = configure(Recipe(channels_last=True), ViewMLP(), device="cpu")
    assert run.inactive == (line,)


def test_channels_last_batch_converts_only_4d_float_tensors_in_any_structure():
    images, labels = _conv_batch()
    batch = {"pixels": images, "labels": labels, "extra": [images[:, :, :, 0], (images,)]}
    out = channels_last_batch(batch)
    assert out["pixels"].is_contiguous(memory_format=CL)
    assert out["labels"] is labels and out["extra"][0] is batch["extra"][0]
    assert out["extra"][1][0].is_contiguous(memory_format=CL)
    assert not to_channels_last(nn.Linear(3, 3))


# -- tf32 -------------------------------------------------------------------------------------


def test_tf32_is_infeasible_on_a_cpu_and_never_runs_there():
    recipe = Recipe(tf32=True)
    assert "TF32" in unsupported_reason(recipe, "cpu")
    assert unsupported_reason(recipe, "cuda") is None
    task = make_toy_task()
    result = run_trial(task, recipe, TrialLimits.for_task(task), device="cpu")
    assert result.status == objective.INFEASIBLE and "TF32" in result.message
    assert result.steps == 0
    with pytest.raises(UserError, match="TF32"):
        configure(recipe, nn.Linear(2, 2), device="cpu")


def test_tf32_setting_follows_the_recipe_both_ways():
    """Process-wide: a recipe without it turns it off again, so a process that runs several
    recipes never carries one's TF32 into the next."""
    set_tf32(True)
    assert tf32_enabled() and torch.get_float32_matmul_precision() == "high"
    prepare(nn.Linear(2, 2), Recipe(), torch.device("cpu"))
    assert not tf32_enabled() and torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.allow_tf32  # torch's default for convolutions, either way


# -- on a GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
def test_gpu_tf32_channels_last_and_fused_optimizer_act_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev = torch.device("cuda")
    torch.manual_seed(0)
    a, b = torch.randn(1024, 1024, device=dev), torch.randn(1024, 1024, device=dev)
    exact = a.double() @ b.double()

    def error() -> float:
        return float(((a @ b).double() - exact).abs().max() / exact.abs().max())

    recipe = Recipe(tf32=True, channels_last=True, fused_optimizer="fused", lr=1e-3)
    model = ConvNet()
    run = configure(recipe, model, device="cuda")
    assert tf32_enabled()
    if torch.cuda.get_device_capability(dev) >= (8, 0):
        tf32_error = error()
        set_tf32(False)
        assert tf32_error > 10 * error()  # TF32's 10-bit mantissa, against fp32's 23
        set_tf32(True)
        assert run.inactive == ()
    assert model.conv.weight.is_contiguous(memory_format=CL)
    assert run.optimizer.defaults["fused"] is True
    before = [p.detach().clone() for p in model.parameters()]
    run.step([[t.to(dev) for t in _conv_batch()]], _loss)
    assert model.seen[-1] is True
    assert all((p.detach() - q).abs().max() > 0 for p, q in zip(model.parameters(), before))


def test_a_bare_off_for_fused_optimizer_says_how_to_write_it():
    from autotune.errors import ConfigError

    with pytest.raises(ConfigError, match="write default"):
        Recipe.from_yaml("fused_optimizer: off\n")
    assert Recipe.from_yaml("fused_optimizer: default\n").fused_optimizer == "default"
