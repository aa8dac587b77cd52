"""Measured peak memory of a training run, per device.

On a GPU: ``torch.cuda.max_memory_allocated`` (tensor memory) and ``max_memory_reserved``
(what the caching allocator holds). On the CPU: the process's peak resident set size, which
includes the Python interpreter and libraries, so it over-states tensor memory; the budget
check on the CPU is therefore conservative.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MemoryPeak:
    """Peaks since ``reset_peak``: ``peak_bytes`` is what the budget is checked against."""

    peak_bytes: int
    reserved_bytes: int | None
    rss_bytes: int
    source: str
    """``cuda_allocated`` or ``cpu_rss``: what ``peak_bytes`` measures."""


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def read_peak(device: torch.device) -> MemoryPeak:
    rss = peak_rss_bytes()
    if device.type == "cuda":
        return MemoryPeak(
            peak_bytes=int(torch.cuda.max_memory_allocated(device)),
            reserved_bytes=int(torch.cuda.max_memory_reserved(device)),
            rss_bytes=rss,
            source="cuda_allocated",
        )
    return MemoryPeak(peak_bytes=rss, reserved_bytes=None, rss_bytes=rss, source="cpu_rss")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator's out-of-memory error (CUDA, or CPU allocation)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError)
    )
