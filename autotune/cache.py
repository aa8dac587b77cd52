"""Where autotune keeps what it builds once and reuses: ``$AUTOTUNE_CACHE_DIR`` if set, else
``~/.cache/autotune``.

Under it: the built-in tasks' prepared tensors (``autotune.tasks``), DeepSpeed's compiled C++
ops (``torch_extensions``) and ``torch.compile``'s artefacts (``inductor``). One rule, here, so
that every trial process of a search (and of later searches) finds the same folder.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AUTOTUNE_CACHE_DIR"


def cache_dir(*parts: str) -> Path:
    """``$AUTOTUNE_CACHE_DIR`` (else ``~/.cache/autotune``), joined with ``parts``."""
    env = os.environ.get(CACHE_ENV)
    return (Path(env) if env else Path.home() / ".cache" / "autotune").joinpath(*parts)
