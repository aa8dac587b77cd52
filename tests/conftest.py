"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from autotune.tasks import Task
from tests.toy_task import make_toy_task


@pytest.fixture
def toy_task() -> Task:
    return make_toy_task()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh, private cache directory for the whole module (its first task load fills it)."""
    path = tmp_path_factory.mktemp("autotune_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOTUNE_CACHE_DIR", str(path))
        yield path
