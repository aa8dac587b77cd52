"""The ``compile`` knob: ``torch.compile`` on the model, and what compiling cost.

- ``compile_model``: compiles a module's ``forward`` in place, so the object a caller holds,
  its ``state_dict`` keys (no ``_orig_mod.`` prefix) and its hooks stay the same, and a DDP or
  FSDP2 wrapper around it calls the compiled forward; its hooks (FSDP2's gathering, DDP's)
  run eagerly around it. ``nn.Module.compile`` would compile ``__call__`` instead, but it
  compiles nothing for a model whose class is one of torch's own (an ``nn.Sequential``:
  dynamo skips torch.nn's frames at the top, measured on torch 2.13), where
  ``torch.compile(model.forward)`` wraps such a forward so that dynamo traces it. Dynamo
  compiles on the first forward pass (and AOTAutograd the backward on the first backward
  pass), that is in the first optimizer step, on the training clock.
- ``compile_seconds``: torch's own count of the wall time this process spent compiling
  (dynamo's frame compiles and AOTAutograd's backward compiles), so a trial measures what a
  step paid to compile apart from what it paid to train.
- ``compile_cache_dir``: one inductor cache (FX graphs, AOTAutograd entries, kernels) for
  every trial of every search on this machine, beside autotune's other caches.
- ``eager``: run a compiled module eagerly for a while (a trial's evaluations), so that
  evaluation shapes and ``no_grad`` never trigger a compile.

Everything here is torch's public ``torch.compile``/``torch.compiler`` API except the
readings of what was compiled (``torch._dynamo.utils``' counters and compile clock, read
defensively: 0 when absent).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from autotune.cache import cache_dir
from autotune.recipe import COMPILE_MODES

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
"""The environment variable inductor reads its cache directory from, at each use."""


def compile_cache_dir() -> Path:
    """Where compiled artefacts are kept between trials and searches:
    ``$AUTOTUNE_CACHE_DIR/inductor``, default ``~/.cache/autotune/inductor`` (the same root as
    the built-in tasks' data and DeepSpeed's compiled ops)."""
    return cache_dir("inductor")


def use_compile_cache() -> str:
    """Point inductor at ``compile_cache_dir`` unless the user already chose a directory
    (``TORCHINDUCTOR_CACHE_DIR`` set); returns the directory in use.

    Sound to share: inductor keys every cached graph by the graph itself, its input shapes,
    strides and dtypes, the inductor configuration, the torch version and the device (CPU
    instruction set, GPU model), so a hit returns the kernels a fresh compile would build.
    """
    return os.environ.setdefault(CACHE_ENV, str(compile_cache_dir()))


def compile_model(model: nn.Module, mode: str) -> bool:
    """Compile ``model``'s forward in place with ``torch.compile`` mode ``mode``; ``none``
    leaves it eager. Returns whether it compiled.

    ``dynamic`` is torch's default (None): the first shapes compile static, and a dimension
    seen to change (a padded batch of another length) is recompiled once as dynamic. Raises
    ``ValueError`` for a mode that is not one of ``COMPILE_MODES``.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}; got {mode!r}")
    if mode == "none":
        return False
    use_compile_cache()
    # An instance attribute: nn.Module.__call__ looks ``forward`` up on the instance first.
    model.forward = torch.compile(model.forward, mode=mode)  # type: ignore[method-assign]
    return True


def _dynamo_utils() -> ModuleType | None:
    """torch's compiler bookkeeping (``torch._dynamo.utils``) if it is loaded. ``torch.compile``
    loads it at the first compile, so before that nothing was compiled; looking it up in
    ``sys.modules`` spares every run that never compiles its 0.8 s import."""
    return sys.modules.get("torch._dynamo.utils")


def compile_seconds() -> float:
    """Seconds this process has spent compiling so far, by torch's own clock: dynamo's frame
    compiles plus AOTAutograd's backward compiles (built lazily at the first backward pass).
    Take the difference around the code to measure; 0.0 before any compile, or when this
    torch does not keep the count."""
    utils = _dynamo_utils()
    try:
        return float(utils.calculate_time_spent().get("total_wall_time", 0.0)) if utils else 0.0
    except Exception:  # noqa: BLE001 - a private count that moved must not fail a run
        return 0.0


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (``counters["stats"]
    ["unique_graphs"]``): goes up at a compile or a recompile, never while eager."""
    utils = _dynamo_utils()
    return int(utils.counters["stats"]["unique_graphs"]) if utils else 0


def cache_hits() -> int:
    """Compiled graphs this process loaded from the inductor cache instead of building them
    (FX graph cache and AOTAutograd cache hits)."""
    utils = _dynamo_utils()
    if utils is None:
        return 0
    return int(utils.counters["inductor"]["fxgraph_cache_hit"]
               + utils.counters["aot_autograd"]["autograd_cache_hit"])


def forget_compiled() -> None:
    """Drop what this process compiled in memory (``torch._dynamo.reset``: dynamo's code
    caches, guards and recompile counts); the disk cache stays. A trial process that runs
    several trials in a row calls it before each compiled one, so a trial compiles as a fresh
    run of a user would (from the disk cache at best), and a long search never reaches
    dynamo's recompile limit, past which it would run the model eagerly without a word."""
    if _dynamo_utils() is not None:  # nothing compiled yet: nothing to drop
        torch._dynamo.reset()


def eager() -> contextlib.AbstractContextManager:
    """A context in which compiled modules run their eager code and never compile
    (``torch.compiler.set_stance("force_eager")``); a no-op on a torch without stances."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        return contextlib.nullcontext()
    return set_stance("force_eager")
