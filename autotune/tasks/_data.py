"""What the built-in tasks share for their data: a seeded train/validation split, and a cache of
prepared tensors (``$AUTOTUNE_CACHE_DIR`` or ``~/.cache/autotune``) so that every trial process
loads them instead of tokenizing again.

The cache is written atomically (several trial processes may build it at the same time) and an
unreadable file is rebuilt, never fatal.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import warnings
from pathlib import Path

import torch

from autotune.cache import cache_dir


def split_indices(n: int, num_validation: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic (train, validation) index split: a seeded permutation, validation first."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[num_validation:], perm[:num_validation]


def cache_file(stem: str, key: str) -> Path:
    """``<cache_dir>/<stem>_<digest of key>.pt``: ``key`` holds everything the tensors depend
    on (format version, source files and their sizes, options)."""
    return cache_dir() / f"{stem}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def read_tensors(path: Path, names: tuple[str, ...]) -> tuple[torch.Tensor, ...] | None:
    """The cached tensors ``names``, or None if the file is absent or unreadable (then the
    caller rebuilds them)."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, weights_only=True)
        return tuple(data[name] for name in names)
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as exc:
        # a truncated or foreign file: rebuild rather than fail
        warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=2)
        return None


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` to ``path`` atomically; a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(tensors, f)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is plain public data
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        warnings.warn(f"could not write the cache file {path}: {exc}", stacklevel=2)
