"""Where a search's numbers came from: library versions, the git commit of the task's code, and
the machine (``torch.utils.collect_env``).

``search.yaml`` gets all of it (``search_provenance``); every trial record gets the compact part
(``trial_provenance``: versions, host, device name), measured in the process that ran the trial,
so a record read on its own still says what produced it. ``torch.utils.collect_env`` takes
about 2 s (it runs ``lscpu``, ``nvidia-smi``, ``pip list``...), so it runs once per process and
is cached. Plain data, no Ray or Optuna.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch.utils import collect_env

LIBRARIES = ("autotune", "torch", "ray", "optuna", "transformers", "deepspeed")
"""Whose version is recorded, when installed (DeepSpeed is optional)."""
GIT_TIMEOUT_S = 5.0
"""A git command that takes longer (a network filesystem, a huge checkout) is given up on."""


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Python's version and that of each of ``LIBRARIES`` that is installed."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_state(directory: Path) -> dict[str, Any] | None:
    """``{"commit", "dirty", "path"}`` of the git checkout holding ``directory``; None when it
    is not in one, git is missing, or git does not answer within ``GIT_TIMEOUT_S``."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                                  text=True, timeout=GIT_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None,
            "path": git("rev-parse", "--show-toplevel") or str(directory)}


def task_source(model: str) -> Path | None:
    """The directory of the module that defines a task given as ``package.module:function``;
    None for a built-in task or a module that cannot be found (the search reports that)."""
    if ":" not in model:
        return None
    module = model.split(":", 1)[0]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return None
    return Path(spec.origin).resolve().parent


def device_name(device_type: str) -> str:
    """The accelerator's name (``NVIDIA H200``), or the CPU's model on a CPU run."""
    if device_type.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_model()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """The summary ``torch.utils.collect_env`` gives: OS, CPU, CUDA and the driver where
    present (about 2 s; cached). ``pip_packages`` is left out: ``versions`` has what matters."""
    try:
        info = collect_env.get_env_info()
    except Exception as exc:  # noqa: BLE001 - provenance must never cost a search
        return {"error": f"torch.utils.collect_env failed: {type(exc).__name__}: {exc}"}
    cpu = next((line.split(":", 1)[1].strip() for line in (info.cpu_info or "").splitlines()
                if line.strip().startswith("Model name:")), None) or cpu_model()
    out = {
        "os": info.os, "python": info.python_version, "python_platform": info.python_platform,
        "torch": info.torch_version, "cpu": cpu, "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_compiled": info.cuda_compiled_version, "cuda_runtime": info.cuda_runtime_version,
        "nvidia_driver": info.nvidia_driver_version, "gpus": info.nvidia_gpu_models,
        "cudnn": info.cudnn_version, "hip_runtime": info.hip_runtime_version,
    }
    # plain str (torch_version is a str subclass, which YAML cannot write)
    return {k: str(v) if isinstance(v, str) else v for k, v in out.items()
            if v not in (None, "", "N/A", "Could not collect")}


def search_provenance(model: str, device_type: str) -> dict[str, Any]:
    """``search.yaml``'s provenance: versions, host, device, the git state of the task's
    module (a user task) and of autotune itself (when run from a checkout), the environment."""
    out: dict[str, Any] = {"versions": library_versions(), "host": socket.gethostname(),
                           "device_name": device_name(device_type)}
    source = task_source(model)
    task_git = git_state(source) if source else None
    if task_git:
        out["task_git"] = task_git
    own = git_state(Path(__file__).resolve().parent)
    if own:
        out["autotune_git"] = own
    out["environment"] = environment()
    return out


@functools.lru_cache(maxsize=4)
def trial_provenance(device_type: str) -> dict[str, Any]:
    """What every trial record carries: versions, host and device name of the process that
    ran it (cheap; cached per process)."""
    return {"versions": library_versions(), "host": socket.gethostname(),
            "device_name": device_name(device_type)}
