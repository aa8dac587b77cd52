"""The training clock of a trial: training seconds only, paused while the trial evaluates,
and on a GPU the device's time, without a host synchronisation per step.

Shared by autotune's own loop (``autotune.train.loop``) and the sessions of loops it does not
own (``autotune.integrations._session``: a Hugging Face ``Trainer``, a training function), so
that a time-to-target means the same in both.

- ``start`` and ``pause`` wait for a GPU's queued work first: the time they record is that of
  the work the device has done.
- ``peek`` reads the host's clock without waiting: what a step checks to decide whether an
  evaluation is due (on a GPU it trails the device by the work still queued; the point itself
  then pauses, and records the device's time).
- ``read`` is the device's time without pausing (it waits for the device).
- ``host_work`` leaves host-side bookkeeping that is not training off the clock where the
  device computes synchronously (a CPU); on a GPU the device goes on with its queued steps
  meanwhile, so the clock runs on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


def device_now(device: torch.device, sync: bool = True) -> float:
    """The host clock; with ``sync``, after waiting for ``device``'s queued work (a GPU)."""
    if sync and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class TrainingClock:
    """A clock of training seconds that can be paused (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.elapsed = 0.0
        """Training seconds up to the last pause."""
        self._start: float | None = None

    @property
    def running(self) -> bool:
        return self._start is not None

    def start(self) -> None:
        """Run the clock from now (after the device's queued work)."""
        self._start = device_now(self.device)

    def restart(self) -> None:
        """Run the clock from 0, now: what came before was not training."""
        self.elapsed = 0.0
        self.start()

    def pause(self) -> float:
        """Stop the clock; returns the training seconds."""
        if self._start is not None:
            self.elapsed += device_now(self.device) - self._start
            self._start = None
        return self.elapsed

    def peek(self) -> float:
        """Training seconds so far by the host's clock, without waiting for the device."""
        return self._read(sync=False)

    def read(self) -> float:
        """Training seconds so far, after waiting for the device; the clock runs on."""
        return self._read(sync=True)

    def _read(self, sync: bool) -> float:
        if self._start is None:
            return self.elapsed
        return self.elapsed + device_now(self.device, sync) - self._start

    @contextlib.contextmanager
    def host_work(self) -> Iterator[None]:
        """Host-side bookkeeping that is not training: off the clock on a CPU, on it on a
        GPU (see the module docstring)."""
        if self.device.type == "cuda" or self._start is None:
            yield
            return
        self.pause()
        try:
            yield
        finally:
            self.start()
