"""Shared fixtures."""

from __future__ import annotations

import pytest

from autotune.tasks import Task
from tests.toy_task import make_toy_task


@pytest.fixture
def toy_task() -> Task:
    return make_toy_task()
