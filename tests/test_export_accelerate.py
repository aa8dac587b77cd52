"""``autotune export --format accelerate``: the file loads with Accelerate's own config loader
(``load_config_from_file``, what ``accelerate launch --config_file`` reads), and a launch with it
runs with the recipe's mixed precision (accelerate is in the ``dev`` extra)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from autotune.cli import main
from autotune.errors import UserError
from autotune.export import accelerate_config, accelerate_unsupported
from autotune.recipe import Recipe

CASES = {
    "single-fp32-cpu": (Recipe(), "cpu", DistributedType.NO, "no"),
    "single-bf16-cuda-compile": (Recipe(precision="bf16", compile="default"), "cuda",
                                 DistributedType.NO, "bf16"),
    "ddp-bf16-cuda": (Recipe(parallelism="ddp", workers=4, precision="bf16"), "cuda",
                      DistributedType.MULTI_GPU, "bf16"),
    "ddp-cpu": (Recipe(parallelism="ddp", workers=2), "cpu", DistributedType.MULTI_CPU, "no"),
    "fsdp-fp16-ckpt": (Recipe(parallelism="fsdp", workers=8, precision="fp16",
                              checkpointing=True), "cuda", DistributedType.FSDP, "fp16"),
    "zero2-offload": (Recipe(parallelism="zero2", workers=2, precision="bf16", offload=True,
                             accumulation_steps=4, grad_clip=1.0), "cuda",
                      DistributedType.DEEPSPEED, "bf16"),
    "zero3-offload": (Recipe(parallelism="zero3", workers=2, offload=True), "cuda",
                      DistributedType.DEEPSPEED, "no"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_exported_file_loads_with_accelerates_own_loader(case, tmp_path, capsys):
    recipe, device, kind, precision = CASES[case]
    path = tmp_path / "best_recipe.yaml"
    path.write_text(recipe.to_yaml())
    assert main(["export", str(path), "--format", "accelerate", "--device", device]) == 0
    assert "accelerate launch --config_file" in capsys.readouterr().out
    config = load_config_from_file(str(tmp_path / "accelerate_config.yaml"))
    assert config.distributed_type == kind
    assert config.mixed_precision == precision
    assert config.num_processes == recipe.workers and config.use_cpu == (device == "cpu")
    if kind == DistributedType.DEEPSPEED:
        ds = config.deepspeed_config
        assert ds["zero_stage"] == int(recipe.parallelism[-1])
        assert ds["offload_optimizer_device"] == ("cpu" if recipe.offload else "none")
        assert ds["offload_param_device"] == (
            "cpu" if recipe.offload and recipe.parallelism == "zero3" else "none")
        assert ds["gradient_accumulation_steps"] == recipe.accumulation_steps
        assert ds["gradient_clipping"] == recipe.grad_clip
    else:
        assert config.deepspeed_config == {}
    if kind == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_activation_checkpointing"] is True
    assert bool(config.dynamo_config) == (recipe.compile != "none")


def test_a_launch_with_the_file_trains_in_the_recipes_precision(tmp_path):
    """``accelerate launch --config_file`` itself, on the CPU: the Accelerator it starts has
    the recipe's mixed precision and one process."""
    config = tmp_path / "accelerate_config.yaml"
    recipe = Recipe(precision="bf16")
    config.write_text(yaml.safe_dump(accelerate_config(recipe, device_type="cpu")))
    script = tmp_path / "show.py"
    script.write_text("from accelerate import Accelerator\n"
                      "a = Accelerator()\n"
                      "print(a.mixed_precision, a.distributed_type, a.num_processes, "
                      "a.device.type)\n")
    launcher = Path(sys.executable).parent / "accelerate"
    done = subprocess.run([str(launcher), "launch", "--config_file", str(config), str(script)],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "bf16 DistributedType.NO 1 cpu"


def test_what_a_launch_config_cannot_hold_is_said():
    notes = accelerate_unsupported(Recipe(accumulation_steps=4, grad_clip=1.0, prune_ratio=0.3,
                                          lr=3e-4, batch_size=16))
    assert notes[0].startswith("in your script: recipe: fp32, micro-batch 16 per device")
    assert any("gradient_accumulation_steps=4" in n for n in notes)
    assert any("clip_grad_norm_(model.parameters(), 1)" in n for n in notes)
    assert any(n.startswith("prune_ratio 0.3") for n in notes)
    zero = accelerate_unsupported(Recipe(parallelism="zero2", workers=2, accumulation_steps=4))
    assert not any("gradient_accumulation_steps=" in n for n in zero)  # the plugin holds it


def test_a_pipeline_recipe_is_refused_with_the_alternative():
    with pytest.raises(UserError, match="--format torchrun"):
        accelerate_config(Recipe(parallelism="pipeline", workers=2))
