"""The trial side of a training loop autotune does not own: the clock, the evaluation schedule,
the stopping rule and the record, shared by the Hugging Face ``Trainer`` callback
(``autotune.integrations.hf_trainer``) and the function API (``autotune.integrations.function``).

The rules are those of autotune's own loop (``autotune.train.loop``), so a Trainer trial's or a
function's time-to-target means what a built-in task's does:

- the training clock counts training only: it starts when training starts (``start``; the
  model, data and optimizer built before it are setup, ``setup_seconds``) and is paused while
  the loop evaluates (``evaluating``: measured as ``eval_seconds``, not counted);
- no host synchronisation per step: after each step the clock is read on the host only, to
  decide whether an evaluation is due; on a GPU it waits for the device where it pauses (an
  evaluation point, the end), so every recorded time is the device's;
- an evaluation is due once the clock has passed the next multiple of
  ``limits.eval_every_seconds`` (the schedule skips the multiples a long step jumped over), or
  later while the trial's evaluations so far took more than a quarter of its training
  (``autotune.train.evaluation.paced_point``), and at the time limit or at
  ``limits.max_steps``. Unlike autotune's own loop, every evaluation is the user's full one (a
  Trainer's ``eval_dataset``, the function's own): autotune cannot read a subset of it;
- each reported metric is a point ``(training seconds, metric)`` of the curve; the first that
  reaches the target (in the metric's direction) ends the trial as *reached* with that time as
  its time-to-target; one at or past the limit without reaching it ends it as *not reached*;
  a non-finite metric ends it as *diverged*; in between, the running measurements go to the
  search's ``report`` callback (its scheduler may stop the trial there);
- out of memory is *infeasible*, any other exception *error*, each with its message, and the
  curve measured until then is kept (nothing measured is lost);
- at the end, the measured peak memory (the allocator's on a GPU; the process's peak RSS on a
  CPU, ``peak_memory_source`` ``cpu_rss``: the user's loop cannot be traced as autotune's own
  step is), the budget verdict and the score, then one final report.

In a worker of a multi-worker trial (a process group initialised: ``autotune.train.distributed
.worker_main``) every worker runs a session and the user's loop, and every worker must take the
same decision at the same step, or some would wait forever in a collective the others never
join. Worker 0 decides: at each step its clock reading, and at each recorded metric its
clock, its metric and its evaluation seconds, are broadcast to the others (a few numbers on the
process group, as autotune's own loop agrees on its clock), and every worker decides from those
same numbers. Only worker 0's report and result count; ``step``'s examples are counted once per
worker. An exception in the user's code is that worker's own: ``leave_if_failed_alone``
raises ``WorkerFailed`` after the record, so that the worker leaves the group instead of
meeting the others at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from autotune import objective
from autotune.knobs import Diverged
from autotune.memory import (
    CPU_RSS,
    cap_device_memory,
    is_out_of_memory,
    read_peak,
    reset_peak,
)
from autotune.train.clock import TrainingClock
from autotune.train.distributed import WorkerFailed
from autotune.train.evaluation import paced_point
from autotune.train.result import ReportFn, TrialLimits, TrialResult


class TrialStopped(BaseException):  # noqa: N818 - a control-flow signal, like StopIteration
    """The trial is decided (target reached, time limit, a diverged metric): raised out of
    ``TrialContext.report`` so that a training function stops where it stands. A
    ``BaseException``, like ``KeyboardInterrupt``, so that a user's ``except Exception`` does
    not swallow it; the function API catches it."""


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set size (Linux: ``5`` to ``/proc/self/clear_refs``),
    so that ``trial_peak_rss`` reads one trial's peak in a process that serves several; False
    where the system cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def trial_peak_rss() -> int | None:
    """The peak RSS since ``reset_peak_rss`` (``VmHWM`` of ``/proc/self/status``), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_group() -> tuple[int, int]:
    """``(rank, world size)`` of this process's group; ``(0, 1)`` outside a multi-worker
    trial."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Session:
    """One trial of a loop that is not autotune's: see the module docstring.

    ``device`` is where the loop trains (the clock synchronises it), ``metric`` the metric's
    name (for messages). ``begin`` caps the device's memory at the budget and resets its peak;
    ``finish`` fills in the memory, the budget verdict and the score, and sends the final
    report."""

    def __init__(self, limits: TrialLimits, report: ReportFn | None, device: torch.device,
                 metric: str) -> None:
        self.limits = limits
        self.report_fn = report
        self.device = device
        self.metric = metric
        self.result = TrialResult(status=objective.RUNNING, score=0.0, device=str(device),
                                  predicted_peak_bytes=limits.predicted_peak_bytes)
        self.decided = False
        """The trial's status is final: reached, not reached, diverged, or failed."""
        self.next_eval = limits.eval_every_seconds
        self.clock = TrainingClock(device)
        """The training clock, autotune's own loop's (``autotune.train.clock``)."""
        self._created = time.perf_counter()
        self._started = False
        self._overdue = False
        """An evaluation was due at the time limit and the loop stepped on without one."""
        self._rss_reset = False
        """The process's peak RSS was reset at ``begin`` (Linux): the peak is this trial's."""
        self.rank, self.world = process_group()
        """This worker's rank and the number of workers (0 and 1 in one process)."""
        self.failed_alone = False
        """An exception in the user's code ended this worker's part of a multi-worker trial
        (the other workers do not know): see ``leave_if_failed_alone``."""

    # -- the clock ------------------------------------------------------------------------

    def begin(self) -> None:
        """Before the user's code runs: the budget as the device's memory cap, a fresh peak
        (on a CPU, the process's peak RSS too: a trial process serves trial after trial).
        The clock starts here too (``start`` restarts it where training really begins)."""
        self.result.memory_cap_fraction = cap_device_memory(self.device, self.limits.budget_bytes)
        reset_peak(self.device)
        self._rss_reset = self.device.type == "cpu" and reset_peak_rss()
        self.clock.start()

    def start(self) -> None:
        """Training starts now: what ran since ``begin`` was setup (``setup_seconds``), and
        the training clock starts from 0. Only the first call counts."""
        if self._started:
            return
        self._started = True
        self.clock.restart()
        self.result.setup_seconds = time.perf_counter() - self._created

    def elapsed(self, sync: bool = True) -> float:
        """Training seconds so far (frozen while the clock is paused); ``sync=False`` reads
        the host clock without waiting for the device (a step's check)."""
        return self.clock.read() if sync else self.clock.peek()

    def pause(self) -> float:
        """Stop the clock (an evaluation begins); returns the training seconds."""
        return self.clock.pause()

    def resume(self) -> None:
        """Start the clock again after an evaluation (not once the trial is decided)."""
        if not self.clock.running and not self.decided:
            self.clock.start()

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """The clock is paused inside; the wall time is added to ``eval_seconds``."""
        self.pause()
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add_eval_seconds(time.perf_counter() - began)
            self.resume()

    def add_eval_seconds(self, seconds: float) -> None:
        """An evaluation took ``seconds`` (off the clock): counted in ``eval_seconds`` and in
        when the next one is due."""
        self.result.eval_seconds += seconds

    # -- steps and evaluations ------------------------------------------------------------

    def out_of_time(self, elapsed: float) -> bool:
        limits = self.limits
        return elapsed >= limits.max_train_seconds or (
            limits.max_steps is not None and self.result.steps >= limits.max_steps)

    def step(self, examples: int = 0) -> bool:
        """One optimizer step was taken (``examples`` training examples in it, on each
        worker); True when an evaluation is due. A loop that steps on past the time limit
        without reporting is ended as not reached (``TrialStopped``). In a multi-worker
        trial every worker calls it at every step (worker 0's clock decides)."""
        self.result.steps += 1
        self.result.examples += examples * self.world
        (elapsed,) = self.from_worker0(self.elapsed(sync=False))
        out = self.out_of_time(elapsed)
        if out and self._overdue:
            if not self.result.curve:  # it never reports: a failure, not a slow recipe
                self._decide(objective.ERROR, f"the training loop never reported {self.metric!r} "
                             f"in {elapsed:.1f}s of training ({self.result.steps} steps), not "
                             "even at the time limit: report it after each evaluation")
            else:
                self._decide(objective.NOT_REACHED, self._short_message(
                    elapsed, " (the loop stepped on past the time limit without reporting)"))
            raise TrialStopped
        self._overdue = out
        return elapsed >= self.next_eval or out

    def record(self, value: float) -> bool:
        """Record a measured metric at the current training time; True when that decides the
        trial (reached, not reached at the limit, or a non-finite metric: diverged). In a
        multi-worker trial every worker calls it at the same evaluation, and worker 0's
        metric and clock are recorded."""
        elapsed, value, spent = self.from_worker0(self.elapsed(), value,
                                                  self.result.eval_seconds)
        self._overdue = False
        while self.next_eval <= elapsed:
            self.next_eval += self.limits.eval_every_seconds
        self.next_eval = paced_point(self.next_eval, spent)
        r = self.result
        r.train_seconds = elapsed
        if not math.isfinite(value):
            r.curve.append((round(elapsed, 4), value))
            self._decide(objective.DIVERGED,
                         f"{self.metric} became {value} after {elapsed:.1f}s of training")
            return True
        r.curve.append((round(elapsed, 4), value))
        r.last_metric = value
        r.best_metric = objective.best_of(r.best_metric, value, self.limits.higher_is_better)
        if objective.reaches(value, self.limits.target, self.limits.higher_is_better):
            r.tta_seconds = elapsed
            self._decide(objective.REACHED, "")
            return True
        if self.out_of_time(elapsed):
            self._decide(objective.NOT_REACHED, self._short_message(elapsed))
            return True
        if self.report_fn is not None:
            self._read_memory()  # a trial the scheduler stops is recorded from this report
            self._score(final=False)
            self.report_fn({**r.to_dict(), "final": False})
        return False

    def from_worker0(self, *values: float) -> list[float]:
        """Worker 0's ``values`` on every worker of a multi-worker trial (a broadcast on the
        process group: gloo on CPUs, its CPU side on GPUs), so that all decide alike; the
        values themselves in one process."""
        if self.world == 1:
            return list(values)
        shared = torch.tensor(values, dtype=torch.float64)
        dist.broadcast(shared, src=0)
        return shared.tolist()

    def _short_message(self, elapsed: float, extra: str = "") -> str:
        r = self.result
        if r.best_metric is None:
            return f"no {self.metric} reported in {elapsed:.1f}s of training{extra}"
        short = "<" if self.limits.higher_is_better else ">"
        return (f"best {self.metric} {r.best_metric:.4f} {short} target {self.limits.target} "
                f"after {elapsed:.1f}s of training ({r.steps} steps){extra}")

    def _decide(self, status: str, message: str) -> None:
        self.pause()
        self.result.status, self.result.message = status, message
        self.result.train_seconds = self.clock.elapsed
        self.decided = True

    # -- the end --------------------------------------------------------------------------

    def fail(self, exc: BaseException, what: str = "", *, raised: bool = True) -> None:
        """What ended the trial, as its status: infeasible (out of memory), diverged (a NaN
        loss that ``autotune.configure``'s step reports), else error. ``what`` names the
        user's code in the message. ``raised``: the user's code raised it on this worker
        (a multi-worker trial's other workers do not know: ``failed_alone``); False for a
        failure every worker finds alike (a metric the evaluation does not report)."""
        self.failed_alone = raised and self.world > 1
        if isinstance(exc, (Diverged, FloatingPointError)):
            status, message = objective.DIVERGED, str(exc).splitlines()[0][:300]
        elif is_out_of_memory(exc):
            status = objective.INFEASIBLE
            message = f"out of memory: {str(exc).splitlines()[0][:300]}"
        else:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            status, message = objective.ERROR, f"{what}{type(exc).__name__}: {first}"
        self._decide(status, message)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def refuse(self, message: str) -> None:
        """The recipe cannot run in this loop here (a multi-worker recipe, TF32 on a CPU):
        infeasible, before anything ran."""
        self._decide(objective.INFEASIBLE, f"not possible here: {message}")

    def end_undecided(self, message: str) -> None:
        """The loop returned before the trial was decided: not reached with what it
        measured, or an error when it reported nothing (``message`` says why)."""
        if self.decided:
            return
        elapsed = self.pause()
        if not self.result.curve:
            self._decide(objective.ERROR, message)
        else:
            self._decide(objective.NOT_REACHED, self._short_message(
                elapsed, " (the training loop returned before the time limit)"))

    def _score(self, final: bool) -> None:
        r, limits = self.result, self.limits
        status = r.status if final else objective.RUNNING
        r.score = objective.score(status, r.tta_seconds, r.best_metric, limits.target,
                                  limits.max_train_seconds, limits.higher_is_better)

    def _read_memory(self) -> int:
        """The measured peaks so far into the result; returns the peak the budget holds."""
        r = self.result
        peak = read_peak(self.device)  # measured: a user's loop is never asked to skip it
        assert peak.peak_bytes is not None
        trial_rss = trial_peak_rss() if self._rss_reset else None
        if trial_rss is not None:  # this trial's, not the process's since it started
            peak = dataclasses.replace(peak, peak_bytes=trial_rss, rss_bytes=trial_rss)
        r.peak_memory_bytes, r.peak_memory_source = peak.peak_bytes, peak.source
        r.peak_reserved_bytes, r.peak_rss_bytes = peak.reserved_bytes, peak.rss_bytes
        if r.predicted_peak_bytes and peak.source != CPU_RSS:  # RSS is not tensor memory
            r.prediction_error = round(peak.peak_bytes / r.predicted_peak_bytes - 1, 4)
        return peak.peak_bytes

    def leave_if_failed_alone(self) -> None:
        """``WorkerFailed`` (``worker N: status: message``) when the user's code raised on
        this worker of a multi-worker trial: the worker must leave the process group, not
        meet the others at the end (they wait in a collective of the user's loop). Call it
        after ``finish``: worker 0 has sent its final report by then."""
        if self.failed_alone:
            r = self.result
            raise WorkerFailed(f"worker {self.rank}: {r.status}: {r.message}")

    def finish(self) -> TrialResult:
        """Memory, the budget verdict, the score, and the final report; returns the result."""
        r, limits = self.result, self.limits
        peak_bytes = self._read_memory()
        if (limits.budget_bytes is not None and peak_bytes > limits.budget_bytes
                and r.status not in objective.FAILED_STATES):
            r.message = (f"peak memory {peak_bytes} bytes ({r.peak_memory_source}) exceeds the "
                         f"budget of {limits.budget_bytes} bytes; {r.status} before that")
            r.status, r.tta_seconds = objective.INFEASIBLE, None
        self._score(final=True)
        if self.report_fn is not None:
            self.report_fn({**r.to_dict(), "final": True})
        return r
