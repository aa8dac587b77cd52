"""Measured peak memory of a training run, per device, and the cap that enforces a budget.

On a GPU: ``torch.cuda.max_memory_allocated`` (tensor memory) and ``max_memory_reserved``
(what the caching allocator holds). On the CPU: the peak of tracked tensor memory, measured by
``TensorTracker`` (torch's ``MemTracker``, live on real tensors) over a training step, and the
process's peak resident set size beside it. RSS includes the interpreter and libraries (about
0.5-1 GiB with no model), so the budget on a CPU is checked against tracked tensor memory, as
on a GPU it is checked against allocated tensor memory.
"""

from __future__ import annotations

import resource
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

CPU_TRACKED = "cpu_tracked"
"""``MemoryPeak.source`` of a CPU peak: tracked tensor memory of a training step."""
CUDA_ALLOCATED = "cuda_allocated"
"""``MemoryPeak.source`` of a GPU peak: ``torch.cuda.max_memory_allocated``."""
CPU_RSS = "cpu_rss"
"""``MemoryPeak.source`` of a CPU peak that fell back to the process's peak RSS."""
NOT_MEASURED = "not_measured"
"""``MemoryPeak.source`` of a CPU run that was not asked to measure its tensor memory (a search
without a memory budget, ``TrialLimits.track_memory``): ``peak_bytes`` is None."""


@dataclass(frozen=True)
class MemoryPeak:
    """Peaks since ``reset_peak``: ``peak_bytes`` is what the budget is checked against."""

    peak_bytes: int | None
    """None: not measured (``NOT_MEASURED``)."""
    reserved_bytes: int | None
    rss_bytes: int
    source: str
    """``cuda_allocated``, ``cpu_tracked``, ``cpu_rss`` or ``not_measured``: what ``peak_bytes``
    measures."""


def reset_peak(device: torch.device) -> None:
    """Start a new peak measurement on ``device`` (the CUDA allocator's peak statistics)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def read_peak(device: torch.device, tracked_bytes: int | None = None,
              measured: bool = True) -> MemoryPeak:
    """The peaks since ``reset_peak``. On the CPU, ``tracked_bytes`` (a ``TensorTracker``
    peak) is the peak when given; without it the CPU peak falls back to the process's RSS,
    unless ``measured`` is False (nothing was tracked on purpose): then it is None,
    ``NOT_MEASURED``, with the RSS beside it."""
    rss = peak_rss_bytes()
    if device.type == "cuda":
        return MemoryPeak(
            peak_bytes=int(torch.cuda.max_memory_allocated(device)),
            reserved_bytes=int(torch.cuda.max_memory_reserved(device)),
            rss_bytes=rss,
            source=CUDA_ALLOCATED,
        )
    if tracked_bytes is not None:
        return MemoryPeak(peak_bytes=int(tracked_bytes), reserved_bytes=None, rss_bytes=rss,
                          source=CPU_TRACKED)
    if not measured:
        return MemoryPeak(peak_bytes=None, reserved_bytes=None, rss_bytes=rss,
                          source=NOT_MEASURED)
    return MemoryPeak(peak_bytes=rss, reserved_bytes=None, rss_bytes=rss, source=CPU_RSS)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator's out-of-memory error (CUDA, or CPU allocation)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError)
    )


def cap_device_memory(device: torch.device, budget_bytes: int | None) -> float | None:
    """Make the CUDA caching allocator refuse to hold more than ``budget_bytes`` on
    ``device`` (``torch.cuda.set_per_process_memory_fraction``), so a recipe that passes on an
    80 GB card asked for a 16 GB budget really fits in 16 GB: beyond it, allocation raises an
    out-of-memory error, which the trial records as infeasible.

    Returns the fraction set, or None when nothing was capped: not a GPU, no budget, or a
    budget at least as large as the card (then a cap left by an earlier trial in the same
    process is lifted). The cap counts reserved memory (cached blocks included), which is at
    least the allocated memory the budget is checked against.
    """
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    if budget_bytes is None or budget_bytes >= total:
        torch.cuda.set_per_process_memory_fraction(1.0, index)
        return None
    fraction = budget_bytes / total
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction


# -- tracked tensor memory (torch's MemTracker) -----------------------------------------------

CATEGORIES = ("parameters", "gradients", "optimizer", "activations")
"""How a tracked peak is broken down (activations include temporaries and other tensors)."""


def _tracker_class() -> type:
    """``MemTracker`` that may see a model's forward several times in one run, and keeps only
    per-device peaks.

    torch's tracker refuses a second forward of the root module (it keeps per-module
    statistics for one iteration); a training step with gradient accumulation, and the second
    step that creates optimizer state, need several. The per-module statistics are not used
    here, only the per-device totals, so they are cleared before each new root forward.
    """
    # lazy: this torch internal takes 0.8 s to import (measured: it pulls in DTensor and the
    # runtime estimator), which every importer of autotune.train would pay at start-up
    from torch.distributed._tools.mem_tracker import MemTracker

    class _StepTracker(MemTracker):  # type: ignore[misc]
        def _update_peak_stats(self, peak_state: Any) -> None:
            # Only the per-device peaks: torch's version also walks every module's statistics
            # after every operation, which made a BERT-base trace 3x slower.
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

        def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
            tracker = self._mod_tracker
            if module in self.memory_tracking and not tracker.is_bw:
                name = tracker.get_known_fqn(module)
                if set(tracker.parents) - {name} == {"Global"}:
                    self.reset_mod_stats()
            super()._pre_fw_hook(module, inputs)

        def _track_module_params_and_buffers(
            self, module: nn.Module, install_grad_hooks: bool = True
        ) -> tuple[int, int]:
            # torch's version hooks every parameter's gradient, which raises for a frozen one
            # (a distillation teacher's): a module with frozen parameters gets no gradient
            # hooks; its trainable parameters' gradients are still seen as parameters' .grad.
            frozen = any(not p.requires_grad for p in module.parameters())
            return super()._track_module_params_and_buffers(
                module, install_grad_hooks=install_grad_hooks and not frozen)

    return _StepTracker


class TensorTracker:
    """Peak tensor memory of whatever runs inside ``with tracker:``, per device and by kind.

    A thin wrapper of ``torch.distributed._tools.mem_tracker.MemTracker``: a dispatch mode
    that sees every tensor created, and frees through weak references, without changing what
    runs. It works on real tensors (a live measurement) and on fake ones (``FakeTensorMode``:
    an estimate without allocating). Tensors created before the ``with`` are counted only
    when passed to the constructor (modules, optimizers or tensors).

    ``phase(name)`` starts a new phase: the peak of each phase is kept apart (a training step's
    forward/backward and its optimizer step peak at different moments, with different
    tensors alive), and ``peak_bytes`` is the largest.
    """

    def __init__(self, *external: nn.Module | torch.optim.Optimizer | torch.Tensor) -> None:
        self._tracker = _tracker_class()()
        self._tracker.track_external(*external)
        self._phase: str | None = None
        self.phase_peaks: dict[str, dict[str, int]] = {}
        """Phase name -> breakdown (``CATEGORIES`` and ``total``) at that phase's peak."""
        self._warnings: Any = None

    def __enter__(self) -> TensorTracker:
        # Hooks on modules that autograd has already released warn once per module.
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message="Module is None")
        self._tracker.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._close_phase()
        self._tracker.__exit__(*exc)
        self._warnings.__exit__(*exc)

    def phase(self, name: str) -> None:
        """End the current phase (keeping its peak) and start ``name`` from the current
        memory; phases with the same name keep the larger peak."""
        self._close_phase()
        self._phase = name
        current = self._tracker.get_tracker_snapshot("current")
        self._tracker._peak_mem = {dev: snap.get("Total", 0) for dev, snap in current.items()}
        self._tracker._peak_mem_snap = current

    def _close_phase(self) -> None:
        name = self._phase or "all"
        peak = self.breakdown(self._tracker.get_tracker_snapshot("peak"))
        if peak["total"] > self.phase_peaks.get(name, {}).get("total", -1):
            self.phase_peaks[name] = peak

    @property
    def peak_bytes(self) -> int:
        """Largest total over every phase (on the busiest device)."""
        self._close_phase()
        return max((p["total"] for p in self.phase_peaks.values()), default=0)

    def peak(self) -> dict[str, int]:
        """The breakdown at the largest peak of any phase."""
        self._close_phase()
        return max(self.phase_peaks.values(), key=lambda p: p["total"],
                   default=dict.fromkeys((*CATEGORIES, "total"), 0))

    @staticmethod
    def breakdown(snapshot: dict[torch.device, dict[Any, int]]) -> dict[str, int]:
        """One device's snapshot (the busiest) in ``CATEGORIES``: parameters include buffers;
        activations include temporaries (gradients of activations) and other tensors."""
        if not snapshot:
            return dict.fromkeys((*CATEGORIES, "total"), 0)
        snap = max(snapshot.values(), key=lambda s: s.get("Total", 0))
        by_name = {getattr(k, "value", k): v for k, v in snap.items()}
        return {
            "parameters": by_name.get("Parameter", 0) + by_name.get("Buffer", 0),
            "gradients": by_name.get("Gradient", 0),
            "optimizer": by_name.get("Optstate", 0),
            "activations": by_name.get("Activation", 0) + by_name.get("Temp", 0)
            + by_name.get("Other", 0),
            "total": by_name.get("Total", 0),
        }

