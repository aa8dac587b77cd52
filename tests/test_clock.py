"""The training clock (``autotune.train.clock``), shared by autotune's loop and the sessions
of a user's own loop: training seconds only."""

from __future__ import annotations

import time

import pytest
import torch

from autotune.train.clock import TrainingClock

CPU = torch.device("cpu")


def test_paused_time_is_not_counted_and_restart_starts_from_zero():
    clock = TrainingClock(CPU)
    assert not clock.running and clock.peek() == 0.0
    clock.start()
    time.sleep(0.05)
    first = clock.pause()
    assert 0.05 <= first < 0.5 and not clock.running
    time.sleep(0.1)  # an evaluation: off the clock
    assert clock.peek() == clock.read() == first
    clock.start()
    time.sleep(0.05)
    assert clock.peek() >= first + 0.05 and clock.running
    total = clock.pause()
    assert total == pytest.approx(first + 0.05, abs=0.1) and total < first + 0.1 + 0.05
    clock.restart()
    assert clock.running and clock.read() < 0.05


def test_host_work_is_off_the_clock_on_a_cpu():
    clock = TrainingClock(CPU)
    clock.start()
    with clock.host_work():
        time.sleep(0.1)
    assert clock.running and clock.pause() < 0.05
    with clock.host_work():  # a paused clock stays paused
        pass
    assert not clock.running
