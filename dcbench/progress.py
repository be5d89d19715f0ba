"""Training progress for `dcbench run`: a bar over epochs that also moves within an epoch (one
line per epoch in a log instead), and, early on, one estimate of how long training will take,
from measured step times, so that nobody waits through a 10-minute epoch without knowing.

Imports no torch: the runner imports this at `dcbench --help` time."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dcbench.errors import TrainingDiverged

if TYPE_CHECKING:
    from dcbench.records import RunRecord

Clock = Callable[[], float]

# The bar counts epochs with one decimal: it moves within an epoch as steps are reported.
BAR_FORMAT = "{l_bar}{bar}| {n:.1f}/{total_fmt} epochs [{elapsed}<{remaining}{postfix}]"
REDRAW_S = 0.5  # within an epoch: redraw the bar at most this often


def _number(x: float) -> str:
    return f"{x:.2g}" if x < 10 else f"{x:.0f}"


def span(seconds: float) -> str:
    """A duration, short and rounded: '85 ms', '2.1 s', '10 min', '3.5 h', '2 d'."""
    if seconds < 1:
        return f"{_number(seconds * 1000)} ms"
    if seconds < 60:
        return f"{_number(seconds)} s"
    if seconds < 90 * 60:
        return f"{_number(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{_number(seconds / 3600)} h"
    return f"{_number(seconds / 86400)} d"


def clock_time(when: float, now: float) -> str:
    """Local time of day of `when` (time.time() seconds), with the weekday if not today."""
    end, today = time.localtime(when), time.localtime(now)
    same_day = (end.tm_year, end.tm_yday) == (today.tm_year, today.tm_yday)
    return time.strftime("%H:%M" if same_day else "%a %H:%M", end)


@dataclass(frozen=True)
class Estimate:
    """How long this process's training will take, from measured step (or epoch) times."""

    epochs: int  # epochs this process trains (fewer than total_epochs when resumed)
    total_epochs: int
    steps_per_epoch: int | None  # None: timed per whole epoch (the method reports no steps)
    unit_s: float  # seconds per step, or per epoch when steps_per_epoch is None
    made_at: float  # time.time() when estimated
    ends_at: float  # time.time() when training should end

    @property
    def train_s(self) -> float:
        return self.epochs * (self.steps_per_epoch or 1) * self.unit_s

    def line(self) -> str:
        """'estimated: 10 epochs x 29 steps x 2.1 s = ~10 min (ends ~12:41)'."""
        unit = "epoch" if self.epochs == 1 else "epochs"
        epochs = (f"{self.epochs} {unit}" if self.epochs == self.total_epochs
                  else f"{self.epochs} more {unit} (of {self.total_epochs})")
        steps = f" x {self.steps_per_epoch} steps" if self.steps_per_epoch else ""
        return (f"estimated: {epochs}{steps} x {span(self.unit_s)} = ~{span(self.train_s)} "
                f"(ends ~{clock_time(self.ends_at, self.made_at)})")

    def as_record(self) -> dict[str, Any]:
        return {"line": self.line(), "epochs": self.epochs, "total_epochs": self.total_epochs,
                "steps_per_epoch": self.steps_per_epoch, "unit_s": round(self.unit_s, 4),
                "train_s": round(self.train_s, 1)}


class RunEstimator:
    """Times optimiser steps and makes one Estimate, early. It skips warm-up steps (allocation,
    lazy initialisation, autotuning), then times steps until MIN_STEPS of them over at least
    MIN_SPAN_S, or MAX_SPAN_S, whichever comes first; an epoch that ends sooner is estimated
    from whatever it timed. Methods that report no steps are estimated from their first epoch.

    Only reads a clock: never synchronises with a device. On a GPU a step's time is when it was
    queued; MIN_SPAN_S is long enough for the queue to fill, and then queueing waits for the GPU."""

    WARMUP_STEPS = 2
    WARMUP_MAX_S = 5.0  # a first step this slow is warm-up enough: do not wait for a second one
    MIN_STEPS = 20
    MIN_SPAN_S = 2.0
    MAX_SPAN_S = 10.0  # with 20 s steps: the estimate comes after ~40 s, within the first minute

    def __init__(self, total_epochs: int, clock: Clock = time.monotonic, wall: Clock = time.time) -> None:
        self.total_epochs, self.clock, self.wall = total_epochs, clock, wall
        self.first_epoch: int | None = None  # the first epoch this process trains (resumed: > 0)
        self.epoch = 0
        self.epoch_t0 = clock()
        self.window_t0: float | None = None  # when warm-up ended in this epoch
        self.window_steps = 0
        self.steps_per_epoch: int | None = None
        self.steps_done = 0  # in this process
        self.estimate: Estimate | None = None

    def epoch_started(self, epoch: int) -> None:
        if self.first_epoch is None:
            self.first_epoch = epoch
        self.epoch, self.epoch_t0 = epoch, self.clock()
        self.window_t0, self.window_steps = None, 0

    def step_done(self, step: int, steps_per_epoch: int) -> Estimate | None:
        """Count a step; returns the estimate when this step made it."""
        self.steps_done += 1
        if self.estimate is not None:
            return None
        self.steps_per_epoch = steps_per_epoch
        now = self.clock()
        if self.window_t0 is None:
            if step + 1 >= self.WARMUP_STEPS or now - self.epoch_t0 >= self.WARMUP_MAX_S:
                self.window_t0 = now
            return None
        self.window_steps += 1
        elapsed = now - self.window_t0
        if elapsed >= self.MAX_SPAN_S or (self.window_steps >= self.MIN_STEPS and elapsed >= self.MIN_SPAN_S):
            return self._make(elapsed / self.window_steps, steps_per_epoch, self.steps_done)
        return None

    def epoch_done(self, epoch: int) -> Estimate | None:
        """At the end of an epoch (its losses read, so queued device work is done): the estimate,
        if none was made yet, from what this epoch timed."""
        now = self.clock()
        if self.first_epoch is None:  # a method that never says when an epoch starts
            self.first_epoch = epoch
        made = None
        if self.estimate is None:
            steps = self.steps_per_epoch
            if steps and self.window_t0 is not None and self.window_steps:
                made = self._make((now - self.window_t0) / self.window_steps, steps, self.steps_done)
            elif steps:
                made = self._make((now - self.epoch_t0) / steps, steps, self.steps_done)
            else:
                made = self._make(now - self.epoch_t0, None, epoch + 1 - self.first_epoch)
        # For methods that do not call epoch_started: the next epoch starts now.
        self.epoch, self.epoch_t0 = epoch + 1, now
        self.window_t0, self.window_steps = None, 0
        return made

    def _make(self, unit_s: float, steps_per_epoch: int | None, units_done: int) -> Estimate:
        epochs = max(self.total_epochs - (self.first_epoch or 0), 1)
        left = max(epochs * (steps_per_epoch or 1) - units_done, 0)
        now = self.wall()
        self.estimate = Estimate(epochs, self.total_epochs, steps_per_epoch, unit_s, now, now + left * unit_s)
        return self.estimate


class EpochProgress:
    """Progress over epochs showing the loss terms: a bar on a terminal, one line per epoch in a
    log file. Keeps the loss history in the run record after every epoch (a resumed run goes
    on from it) and stops the run on a non-finite loss.

    Also the run context's `step_progress` (dcbench.api.StepProgress): reported steps move the bar
    within an epoch and give the estimate of the run's duration, shown once (a line above the
    bar or in the log, the bar's postfix) and kept in the record as `estimated_train_s`."""

    def __init__(self, epochs: int, label: str, record: RunRecord | None = None,
                 clock: Clock = time.monotonic, wall: Clock = time.time) -> None:
        from tqdm.auto import tqdm

        self.epochs, self.label, self.record, self.clock = epochs, label, record, clock
        self.estimator = RunEstimator(epochs, clock, wall)
        self.bar = None
        self._drawn = clock()
        if sys.stderr.isatty():
            done = len(record.loss_history) if record else 0  # a resumed run starts its bar where it stopped
            self.bar = tqdm(total=epochs, initial=min(done, epochs), desc=label, unit="epoch",
                            dynamic_ncols=True, leave=True, bar_format=BAR_FORMAT)

    def epoch_started(self, epoch: int) -> None:
        self.estimator.epoch_started(epoch)

    def step_done(self, step: int, steps_per_epoch: int) -> None:
        estimate = self.estimator.step_done(step, steps_per_epoch)
        if estimate is not None:
            self._show(estimate)
        if self.bar is not None:
            now = self.clock()
            if now - self._drawn >= REDRAW_S:
                self.bar.n = self.estimator.epoch + (step + 1) / max(steps_per_epoch, 1)
                self.bar.refresh()
                self._drawn = now

    def __call__(self, epoch: int, terms: dict[str, float]) -> None:
        if self.record is not None:  # a resumed run's repeated epochs replace their old numbers there
            self.record.add_epoch(epoch, terms)
        bad = [k for k, v in terms.items() if not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(f"loss term '{bad[0]}' became {terms[bad[0]]} in epoch {epoch + 1}; "
                                   "try a lower learning rate (--set lr=...) or another seed")
        estimate = self.estimator.epoch_done(epoch)
        if estimate is not None:
            self._show(estimate)
        if self.bar is not None:
            self.bar.n = epoch + 1
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()}, refresh=True)
        else:
            losses = ", ".join(f"{k} {v:.4g}" for k, v in terms.items())
            print(f"{self.label}: epoch {epoch + 1}/{self.epochs}: {losses}", file=sys.stderr, flush=True)

    def _show(self, estimate: Estimate) -> None:
        line = estimate.line()
        if self.record is not None:
            self.record.note_estimate(estimate.as_record(), estimate.train_s)
        if self.bar is not None:
            self.bar.write(f"{self.label}: {line}", file=sys.stderr)
            self.bar.set_postfix_str(line, refresh=True)  # until the first epoch's losses replace it
        else:
            print(f"{self.label}: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
