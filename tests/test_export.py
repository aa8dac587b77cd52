"""`autotune export`: every exported file is loaded by the real library that takes it.

DeepSpeed configs go through ``deepspeed.initialize`` on DeepSpeed's CPU accelerator (gloo, one
process) and take optimizer steps; the run happens in a subprocess (``_ds_worker``) so this
process's torch.distributed state stays clean. HF keyword arguments go through
``transformers.TrainingArguments`` and the Trainer's own optimizer and scheduler. Launch commands
go through torchrun's own argument parser.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from autotune.cli import main
from autotune.errors import UserError
from autotune.export import (
    deepspeed_config,
    hf_training_arguments,
    hf_unsupported,
    hf_yaml,
    torchrun_command,
)
from autotune.knobs import lr_factor
from autotune.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
EXTENSIONS_DIR = Path.home() / ".cache" / "autotune" / "torch_extensions"
"""DeepSpeed's CPU accelerator compiles C++ ops on first use (its shared-memory collective at
``init_distributed``, ~40 s; ``DeepSpeedCPUAdam`` for offload, 1-2 min); they are cached here."""

BASE = dict(batch_size=4, lr=0.01, weight_decay=0.0)
DS_CASES = {
    "zero1-fp32-adamw": Recipe(parallelism="zero1", optimizer="adamw", **BASE),
    "zero1-bf16-sgd-accum2": Recipe(parallelism="zero1", precision="bf16", optimizer="sgd",
                                    accumulation_steps=2, momentum=0.9, **BASE),
    "zero2-fp32-adam-linear": Recipe(parallelism="zero2", optimizer="adam", schedule="linear",
                                     decay_steps=10, **BASE),
    "zero2-bf16-adamw-cosine": Recipe(parallelism="zero2", precision="bf16", warmup_steps=1,
                                      schedule="cosine", decay_steps=10, **BASE),
    "zero3-fp32-sgd-warmup": Recipe(parallelism="zero3", optimizer="sgd", warmup_steps=2,
                                    **BASE),
    "zero3-bf16-adamw-accum2": Recipe(parallelism="zero3", precision="bf16",
                                      accumulation_steps=2, **BASE),
    # grad_clip as DeepSpeed's gradient_clipping; fused_optimizer passed to the torch optimizer
    # DeepSpeed builds (SGD, and Adam with torch_adam on the CPU).
    "zero2-fp32-sgd-fused-clip": Recipe(parallelism="zero2", optimizer="sgd",
                                        fused_optimizer="fused", grad_clip=0.5, **BASE),
    "zero1-fp32-adamw-foreach": Recipe(parallelism="zero1", fused_optimizer="foreach", **BASE),
}
OFFLOAD_CASES = {
    "zero2-offload-adamw": Recipe(parallelism="zero2", offload=True, **BASE),
    "zero3-offload-bf16-adam": Recipe(parallelism="zero3", offload=True, precision="bf16",
                                      optimizer="adam", weight_decay=0.01, batch_size=4, lr=0.01),
    "zero1-offload-sgd": Recipe(parallelism="zero1", offload=True, optimizer="sgd", **BASE),
}
STEPS = 4
"""Optimizer steps each DeepSpeed engine takes (a warmup's first two run at ~0)."""


# -- DeepSpeed: the config itself -----------------------------------------------------------


def test_deepspeed_config_batch_arithmetic_stage_and_precision():
    r = Recipe(parallelism="zero2", workers=4, batch_size=16, accumulation_steps=3,
               precision="bf16")
    c = deepspeed_config(r)
    assert c["train_micro_batch_size_per_gpu"] == 16
    assert c["gradient_accumulation_steps"] == 3
    assert c["train_batch_size"] == 16 * 3 * 4
    assert c["zero_optimization"] == {"stage": 2}
    assert c["bf16"] == {"enabled": True} and c["fp16"] == {"enabled": False}
    # Explicit: left out, DeepSpeed (0.19) would clip at its default of 1.0.
    assert c["gradient_clipping"] == 0.0
    assert c["optimizer"] == {"type": "AdamW", "params": {
        "lr": r.lr, "weight_decay": r.weight_decay, "adam_w_mode": True, "torch_adam": False}}
    json.dumps(c)  # plain data


def test_deepspeed_clipping_and_optimizer_implementation():
    c = deepspeed_config(Recipe(parallelism="zero2", grad_clip=1.0, optimizer="sgd",
                                fused_optimizer="fused"))
    assert c["gradient_clipping"] == 1.0
    assert c["optimizer"]["params"]["fused"] is True
    # On a GPU DeepSpeed's own Adam is fused already: nothing to pass.
    gpu = deepspeed_config(Recipe(parallelism="zero2", fused_optimizer="fused"))
    assert "fused" not in gpu["optimizer"]["params"]
    cpu = deepspeed_config(Recipe(parallelism="zero2", fused_optimizer="foreach"),
                           device_type="cpu")
    assert cpu["optimizer"]["params"]["foreach"] is True  # torch_adam: torch's AdamW takes it


def test_deepspeed_fp16_uses_dynamic_loss_scaling():
    c = deepspeed_config(Recipe(parallelism="zero1", precision="fp16"))
    assert c["fp16"]["enabled"] and c["fp16"]["loss_scale"] == 0


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_offload(stage):
    c = deepspeed_config(Recipe(parallelism=f"zero{stage}", offload=True))
    zero = c["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert ("offload_param" in zero) == (stage == 3)
    assert c["optimizer"]["params"]["torch_adam"] is False  # DeepSpeedCPUAdam
    cpu = deepspeed_config(Recipe(parallelism=f"zero{stage}", offload=True), device_type="cpu")
    assert cpu["zero_optimization"]["offload_optimizer"]["pin_memory"] is False


def test_deepspeed_adam_is_not_silently_adamw_and_sgd_keeps_momentum():
    adam = deepspeed_config(Recipe(parallelism="zero1", optimizer="adam"))["optimizer"]
    assert adam["type"] == "Adam" and adam["params"]["adam_w_mode"] is False
    sgd = deepspeed_config(Recipe(parallelism="zero1", optimizer="sgd", momentum=0.8))
    assert sgd["optimizer"] == {"type": "SGD", "params": {"lr": 1e-3, "weight_decay": 0.01,
                                                          "momentum": 0.8}}
    assert sgd["zero_allow_untested_optimizer"] is True


@pytest.mark.parametrize("parallelism", ["single", "ddp", "fsdp"])
def test_deepspeed_refuses_a_recipe_that_is_not_zero(parallelism):
    r = Recipe(parallelism=parallelism, workers=1 if parallelism == "single" else 2)
    with pytest.raises(UserError, match=f"parallelism is '{parallelism}'") as exc:
        deepspeed_config(r)
    assert "torchrun" in str(exc.value) and "hf" in str(exc.value)


def test_deepspeed_refuses_fp16_on_cpu():
    with pytest.raises(UserError, match="fp16"):
        deepspeed_config(Recipe(parallelism="zero2", precision="fp16"), device_type="cpu")


SCHEDULES = [
    Recipe(parallelism="zero1", lr=0.1),
    Recipe(parallelism="zero1", lr=0.1, warmup_steps=10),
    Recipe(parallelism="zero1", lr=0.1, schedule="linear", decay_steps=50),
    Recipe(parallelism="zero1", lr=0.1, schedule="linear", warmup_steps=10, decay_steps=50),
    Recipe(parallelism="zero1", lr=0.1, schedule="cosine", decay_steps=50),
    Recipe(parallelism="zero1", lr=0.1, schedule="cosine", warmup_steps=10, decay_steps=50),
]


def _lrs(optimizer: Any, scheduler: Any, steps: int) -> list[float]:
    """The learning rate of each optimizer step, the scheduler stepped after each (as the
    DeepSpeed engine and the HF Trainer do)."""
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # no gradients: changes nothing, keeps the scheduler's order check quiet
        scheduler.step()
    return out


@pytest.mark.parametrize("recipe", SCHEDULES, ids=lambda r: r.describe())
def test_deepspeed_schedule_follows_the_recipe(recipe, monkeypatch):
    """DeepSpeed's own scheduler classes, built from the exported section, give the recipe's
    learning rate after warmup (within its two-step lag) and hold 10% after the decay."""
    import torch

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime import lr_schedules

    section = deepspeed_config(recipe).get("scheduler")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe.lr)
    steps = 2 * recipe.decay_steps
    if section is None:
        assert recipe.schedule == "constant" and recipe.warmup_steps == 0
        return
    sched = getattr(lr_schedules, section["type"])(opt, **section["params"])
    ds = _lrs(opt, sched, steps)
    ours = [recipe.lr * lr_factor(s, recipe) for s in range(steps)]
    slope = recipe.lr * math.pi / max(1, recipe.decay_steps - recipe.warmup_steps)
    for s in range(recipe.warmup_steps + 3, steps):
        assert abs(ds[s] - ours[s]) <= slope + 1e-12, (s, ds[s], ours[s])
    assert ds[-1] == pytest.approx(ours[-1])


# -- DeepSpeed: the config through deepspeed.initialize --------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ds_worker(cases_path: str, results_path: str) -> None:
    """Subprocess body: join a one-process gloo group, then for each config build a DeepSpeed
    engine around a tiny model and take ``STEPS`` optimizer steps."""
    import deepspeed
    import torch

    deepspeed.init_distributed(dist_backend="gloo")
    results = {}
    for name, config in json.loads(Path(cases_path).read_text()).items():
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 4)
        engine, _, _, scheduler = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), config=config)
        dtype = torch.bfloat16 if config["bf16"]["enabled"] else torch.float32
        x = torch.randn(config["train_micro_batch_size_per_gpu"], 8).to(dtype)
        y = (x.float() @ torch.ones(8, 4)).to(dtype)

        def loss_fn(x=x, y=y, engine=engine):
            return (engine(x).float() - y.float()).pow(2).mean()

        with torch.no_grad():
            before = loss_fn().item()
        for _ in range(STEPS * config["gradient_accumulation_steps"]):
            loss = loss_fn()
            engine.backward(loss)
            engine.step()
        with torch.no_grad():
            after = loss_fn().item()
        basic = engine.basic_optimizer
        results[name] = {
            "before": before, "after": after, "global_steps": engine.global_steps,
            "train_batch_size": engine.train_batch_size(),
            "stage": engine.zero_optimization_stage(), "bf16": engine.bfloat16_enabled(),
            "offload": bool(engine.zero_cpu_offload()),
            "basic_optimizer": type(basic).__name__,
            "adamw_mode": getattr(basic, "adam_w_mode", None),
            "momentum": basic.param_groups[0].get("momentum"),
            "implementation": {k: basic.defaults.get(k) for k in ("foreach", "fused")},
            "gradient_clipping": engine.gradient_clipping(),
            "scheduler": type(scheduler).__name__ if scheduler is not None else None,
        }
        engine.destroy()
    Path(results_path).write_text(json.dumps(results))


def _run_ds(cases: dict[str, Recipe], tmp_path: Path) -> tuple[dict[str, Any], float]:
    cases_path, results_path = tmp_path / "cases.json", tmp_path / "results.json"
    cases_path.write_text(json.dumps(
        {n: deepspeed_config(r, device_type="cpu") for n, r in cases.items()}))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "LOCAL_SIZE": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(EXTENSIONS_DIR))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from tests.test_export import _ds_worker; "
         "_ds_worker(sys.argv[1], sys.argv[2])", str(cases_path), str(results_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return json.loads(results_path.read_text()), elapsed


def _check_engine(name: str, recipe: Recipe, got: dict[str, Any]) -> None:
    assert got["global_steps"] == STEPS, name
    assert got["train_batch_size"] == recipe.batch_size * recipe.accumulation_steps
    assert got["stage"] == int(recipe.parallelism[-1])
    assert got["bf16"] == (recipe.precision == "bf16")
    assert got["offload"] == recipe.offload
    assert got["after"] < got["before"], (name, got)
    assert got["gradient_clipping"] == recipe.grad_clip
    if not recipe.offload:  # DeepSpeedCPUAdam is its own kernel
        impl = recipe.fused_optimizer
        assert got["implementation"] == {k: True if impl == k else None
                                         for k in ("foreach", "fused")}, name
    if recipe.optimizer == "sgd":
        assert got["basic_optimizer"] == "SGD" and got["momentum"] == recipe.momentum
    elif recipe.offload:
        assert got["basic_optimizer"] == "DeepSpeedCPUAdam"
        assert got["adamw_mode"] == (recipe.optimizer == "adamw")
    else:
        assert got["basic_optimizer"] == {"adam": "Adam", "adamw": "AdamW"}[recipe.optimizer]
    expected = {"constant": "WarmupLR", "linear": "WarmupDecayLR", "cosine": "WarmupCosineLR"}
    if recipe.schedule == "constant" and recipe.warmup_steps == 0:
        assert got["scheduler"] is None
    else:
        assert got["scheduler"] == expected[recipe.schedule]


@pytest.fixture(scope="module")
def ds_results(tmp_path_factory):
    results, elapsed = _run_ds(DS_CASES, tmp_path_factory.mktemp("ds"))
    print(f"\nDeepSpeed ZeRO 1-3 x fp32/bf16 configs: {elapsed:.1f}s in one subprocess")
    return results


@pytest.mark.parametrize("name", list(DS_CASES))
def test_deepspeed_initialize_accepts_config_and_steps(name, ds_results):
    _check_engine(name, DS_CASES[name], ds_results[name])


@pytest.mark.slow
def test_deepspeed_offload_configs_step_with_cpu_optimizers(tmp_path):
    """Offload: DeepSpeedCPUAdam (a C++ op compiled on first use, 1-2 min when cold)."""
    results, elapsed = _run_ds(OFFLOAD_CASES, tmp_path)
    print(f"\nDeepSpeed offload configs: {elapsed:.1f}s")
    for name, recipe in OFFLOAD_CASES.items():
        _check_engine(name, recipe, results[name])


# -- transformers ---------------------------------------------------------------------------


@pytest.fixture
def clean_hf_state():
    """TrainingArguments set environment variables and, with a DeepSpeed config, a global that
    makes transformers build later models the ZeRO-3 way: undo both."""
    saved = dict(os.environ)
    yield
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    os.environ.clear()
    os.environ.update(saved)


HF_CASES = [
    Recipe(),
    Recipe(precision="bf16", batch_size=64, warmup_steps=50, lr=0.001),
    Recipe(optimizer="sgd", momentum=0.8, lr=0.1, schedule="cosine", warmup_steps=10,
           decay_steps=60, parallelism="ddp", workers=2),
    Recipe(schedule="linear", warmup_steps=5, decay_steps=40, parallelism="fsdp", workers=2),
    Recipe(precision="bf16", parallelism="zero2", accumulation_steps=2, schedule="cosine",
           warmup_steps=5, decay_steps=40),
    Recipe(optimizer="sgd", parallelism="zero3", offload=True, schedule="linear",
           decay_steps=40),
    Recipe(precision="bf16", checkpointing=True),
    Recipe(dataloader_workers=2, prefetch_factor=4, persistent_workers=True, pin_memory=True),
    Recipe(grad_clip=1.0, fused_optimizer="fused"),
    Recipe(optimizer="sgd", grad_clip=0.5, precision="bf16", parallelism="zero1",
           fused_optimizer="fused"),
    Recipe(compile="max-autotune-no-cudagraphs"),
]


@pytest.mark.filterwarnings("ignore:Both num_training_steps and num_stable_steps")
@pytest.mark.parametrize("recipe", HF_CASES, ids=lambda r: r.describe())
def test_hf_arguments_build_the_trainers_optimizer_and_schedule(recipe, tmp_path,
                                                                 clean_hf_state):
    import torch
    import transformers

    ds_path = None
    if recipe.parallelism.startswith("zero"):
        ds_path = tmp_path / "ds_config_hf.json"
        ds_path.write_text(json.dumps(
            deepspeed_config(recipe, device_type="cpu", with_scheduler=False)))
    kwargs = hf_training_arguments(
        recipe, device_type="cpu", deepspeed_config_path=str(ds_path) if ds_path else None)
    json.dumps(kwargs)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none", **kwargs)
    assert args.per_device_train_batch_size == recipe.batch_size
    assert args.gradient_accumulation_steps == recipe.accumulation_steps
    assert args.gradient_checkpointing == recipe.checkpointing
    assert args.bf16 == (recipe.precision == "bf16")
    assert args.max_grad_norm == recipe.grad_clip
    assert args.torch_compile == (recipe.compile != "none")
    assert args.torch_compile_mode == (None if recipe.compile == "none" else recipe.compile)
    assert bool(args.fsdp) == (recipe.parallelism == "fsdp")
    assert args.dataloader_num_workers == recipe.dataloader_workers
    assert kwargs["dataloader_pin_memory"] == recipe.pin_memory  # HF turns it off with use_cpu
    if recipe.dataloader_workers:
        assert args.dataloader_prefetch_factor == recipe.prefetch_factor
        assert args.dataloader_persistent_workers == recipe.persistent_workers
    if ds_path:
        ds = args.hf_deepspeed_config
        ds.trainer_config_finalize(args, torch.nn.Linear(2, 2), num_training_steps=100)
        assert ds.mismatches == []  # the two exports agree
        assert ds.get_value("zero_optimization.stage") == int(recipe.parallelism[-1])
        assert ds.is_offload() == recipe.offload
        return
    if recipe.parallelism == "fsdp":
        plugin = args.fsdp_plugin_args
        assert plugin["fsdp_version"] == 2 and plugin["reshard_after_forward"] is True
        # The Trainer runs FSDP only in a distributed launch; check the rest without it.
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("fsdp")}
        args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                              **kwargs)
    steps = 2 * recipe.decay_steps
    trainer = transformers.Trainer(model=torch.nn.Linear(4, 2), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    opt = trainer.optimizer
    if recipe.optimizer == "sgd":
        assert isinstance(opt, torch.optim.SGD)
        assert opt.param_groups[0]["momentum"] == recipe.momentum
    else:
        assert isinstance(opt, torch.optim.AdamW)
        assert opt.defaults["fused"] is (True if recipe.fused_optimizer == "fused" else None)
    hf = _lrs(opt, trainer.lr_scheduler, steps)
    ours = [recipe.lr * lr_factor(s, recipe) for s in range(steps)]
    # After warmup the Trainer's learning rate is the recipe's, step for step.
    assert hf[recipe.warmup_steps:] == pytest.approx(ours[recipe.warmup_steps:], rel=1e-9)


def test_hf_lists_what_it_cannot_express():
    assert hf_unsupported(Recipe()) == []
    assert hf_unsupported(Recipe(optimizer="sgd")) == []  # momentum goes in optim_args
    notes = hf_unsupported(Recipe(prune_ratio=0.3, weight_sparsity=0.2, optimizer="adam"))
    assert any(n.startswith("prune_ratio 0.3") and "prune_structured(model, 0.3)" in n
               for n in notes)
    assert any(n.startswith("weight_sparsity 0.2") for n in notes)
    assert any(n.startswith("optimizer adam") for n in notes)
    assert hf_unsupported(Recipe(optimizer="adam", weight_decay=0.0)) == []
    # Through DeepSpeed the optimizer is Adam itself.
    assert hf_unsupported(Recipe(optimizer="adam", parallelism="zero1")) == []


def test_hf_new_knobs_and_what_it_cannot_express_of_them():
    assert hf_training_arguments(Recipe(grad_clip=0.25))["max_grad_norm"] == 0.25
    assert "tf32" not in hf_training_arguments(Recipe())  # torch's defaults
    assert hf_training_arguments(Recipe(tf32=True))["tf32"] is True
    with pytest.raises(UserError, match="tf32"):
        hf_training_arguments(Recipe(tf32=True), device_type="cpu")
    assert hf_training_arguments(Recipe(optimizer="adam", fused_optimizer="fused"))["optim"] \
        == "adamw_torch_fused"
    assert hf_unsupported(Recipe(fused_optimizer="fused")) == []
    (note,) = hf_unsupported(Recipe(fused_optimizer="foreach"))
    assert note.startswith("fused_optimizer foreach") and "'foreach': True" in note
    (note,) = hf_unsupported(Recipe(optimizer="sgd", fused_optimizer="fused"))
    assert "torch.optim.SGD" in note
    # A ZeRO recipe's DeepSpeed config carries the implementation.
    assert hf_unsupported(Recipe(optimizer="sgd", fused_optimizer="fused",
                                 parallelism="zero1")) == []
    (note,) = hf_unsupported(Recipe(channels_last=True))
    assert note.startswith("channels_last") and "memory_format=torch.channels_last" in note


def test_hf_compile_is_torch_compile_with_the_mode_and_refuses_cuda_graphs_on_a_cpu():
    assert "torch_compile" not in hf_training_arguments(Recipe())
    kwargs = hf_training_arguments(Recipe(compile="reduce-overhead"))
    assert kwargs["torch_compile"] is True and kwargs["torch_compile_mode"] == "reduce-overhead"
    with pytest.raises(UserError, match="CUDA graphs"):
        hf_training_arguments(Recipe(compile="reduce-overhead"), device_type="cpu")
    assert hf_unsupported(Recipe(compile="default")) == []
    text = hf_yaml(hf_training_arguments(Recipe(compile="default")), Recipe(compile="default"),
                   [], "best_recipe.yaml")
    assert "# torch.compile the model" in text and "torch_compile_mode: default" in text


def test_hf_zero_recipe_needs_a_deepspeed_config():
    with pytest.raises(UserError, match="DeepSpeed config"):
        hf_training_arguments(Recipe(parallelism="zero1"))
    with pytest.raises(UserError, match="not a ZeRO mode"):
        hf_training_arguments(Recipe(), deepspeed_config_path="ds.json")


# -- launch command -------------------------------------------------------------------------


def _torchrun_args(command: str) -> tuple[Any, list[str]]:
    from torch.distributed.run import get_args_parser

    argv = shlex.split(command, comments=True)
    assert argv[0] == "torchrun"
    return get_args_parser().parse_args(argv[1:]), argv


def test_torchrun_comment_names_what_the_script_must_apply_of_the_new_knobs():
    plain = torchrun_command(Recipe())
    assert "clipped" not in plain and "TF32" not in plain
    text = torchrun_command(Recipe(grad_clip=1.0, fused_optimizer="fused", tf32=True,
                                   channels_last=True, parallelism="ddp", workers=2))
    comment = text.splitlines()[0]
    for part in ("gradient norm clipped at 1", "fused optimizer", "TF32 matmuls",
                 "channels_last"):
        assert part in comment, comment
    assert "compile" not in comment
    comment = torchrun_command(Recipe(compile="default")).splitlines()[0]
    assert "torch.compile mode default" in comment and "engine.compile" not in comment
    comment = torchrun_command(Recipe(compile="default", parallelism="zero2", workers=2))
    assert "engine.compile(compile_kwargs={'mode': ...})" in comment.splitlines()[0]


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp", "zero3"])
def test_torchrun_command_parses_with_torchruns_parser(parallelism):
    r = Recipe(parallelism=parallelism, workers=4, precision="bf16", accumulation_steps=2)
    text = torchrun_command(r, script="my_train.py")
    comment, command = text.strip().splitlines()
    assert comment.startswith("#") and "bf16" in comment and "micro-batch 32" in comment
    assert "2 accumulation steps" in comment
    args, argv = _torchrun_args(text)
    assert args.nproc_per_node == "4" and args.standalone
    assert args.training_script == "my_train.py"
    zero_args = ["--deepspeed_config", "ds_config.json"]
    assert (args.training_script_args == zero_args) == (parallelism == "zero3")


def test_torchrun_command_over_nodes_and_single():
    args, _ = _torchrun_args(torchrun_command(Recipe(parallelism="ddp", workers=8), nnodes=2))
    assert args.nnodes == "2" and args.nproc_per_node == "4" and args.rdzv_backend == "c10d"
    assert args.rdzv_endpoint == "$MASTER_ADDR:29500"  # left for the shell to expand
    single = shlex.split(torchrun_command(Recipe()), comments=True)
    assert single == ["python", "train.py"]
    with pytest.raises(UserError, match="split evenly"):
        torchrun_command(Recipe(parallelism="ddp", workers=3), nnodes=2)
    with pytest.raises(UserError, match="one node"):
        torchrun_command(Recipe(), nnodes=2)


# -- the command line -----------------------------------------------------------------------


def _write_recipe(tmp_path: Path, recipe: Recipe, best: bool = False) -> Path:
    path = tmp_path / ("best_recipe.yaml" if best else "recipe.yaml")
    text = yaml.safe_dump({"recipe": recipe.to_dict(), "measured": {"tta_seconds": 8.0}}) \
        if best else recipe.to_yaml()
    path.write_text(text)
    return path


def test_cli_exports_deepspeed_config_beside_the_recipe(tmp_path, capsys):
    recipe = Recipe(parallelism="zero2", precision="bf16", workers=2)
    path = _write_recipe(tmp_path, recipe, best=True)
    assert main(["export", str(path), "--format", "deepspeed"]) == 0
    written = tmp_path / "ds_config.json"
    assert json.loads(written.read_text()) == deepspeed_config(recipe)
    assert str(written) in capsys.readouterr().out


def test_cli_exports_hf_yaml_with_its_deepspeed_config(tmp_path, capsys, clean_hf_state):
    import transformers

    recipe = Recipe(parallelism="zero1", prune_ratio=0.2, optimizer="sgd")
    path = _write_recipe(tmp_path, recipe)
    out = tmp_path / "out" / "args.yaml"
    assert main(["export", str(path), "--format", "hf", "--output", str(out),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    kwargs = yaml.safe_load(out.read_text())
    ds_path = Path(kwargs["deepspeed"])
    assert ds_path.exists() and str(ds_path) in printed and str(out) in printed
    assert "scheduler" not in json.loads(ds_path.read_text())
    assert "warning: prune_ratio 0.2" in printed
    transformers.TrainingArguments(output_dir=str(tmp_path), **kwargs)


def test_cli_exports_hf_json_and_torchrun(tmp_path, capsys):
    path = _write_recipe(tmp_path, Recipe(parallelism="ddp", workers=2))
    assert main(["export", str(path), "--format", "hf", "--hf-format", "json"]) == 0
    assert json.loads((tmp_path / "hf_training_args.json").read_text())["learning_rate"] == 1e-3
    capsys.readouterr()
    assert main(["export", str(path), "--format", "torchrun", "--script", "t.py"]) == 0
    printed = capsys.readouterr().out
    assert "torchrun --standalone --nproc-per-node=2 t.py" in printed
    out = tmp_path / "launch.sh"
    assert main(["export", str(path), "--format", "torchrun", "--output", str(out)]) == 0
    assert "--nproc-per-node=2" in out.read_text()


@pytest.mark.parametrize(
    ("recipe", "args", "needle"),
    [
        (Recipe(), ["--format", "deepspeed"], "parallelism is 'single'"),
        (Recipe(parallelism="zero2", precision="fp16"), ["--format", "deepspeed", "--device",
                                                         "cpu"], "fp16"),
        (Recipe(), ["--format", "deepspeed", "--hf-format", "json"], "--hf-format"),
        (Recipe(), ["--format", "hf", "--nnodes", "2"], "--nnodes"),
    ],
)
def test_cli_export_mistakes_exit_2(recipe, args, needle, tmp_path, capsys):
    path = _write_recipe(tmp_path, recipe)
    assert main(["export", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err


def test_cli_export_bad_file_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope.yaml"), "--format", "hf"]) == 2
    assert "file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("precision: fp8\n")
    assert main(["export", str(bad), "--format", "torchrun"]) == 2
    assert "precision" in capsys.readouterr().err
