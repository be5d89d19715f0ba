"""Stopping a run from outside: Ctrl-C and SIGTERM, and the exit status each one gives.

SIGTERM (a Slurm time limit, `kill`) is turned into an exception that *is* a KeyboardInterrupt,
so every `except KeyboardInterrupt` (records marked `interrupted`, executors stopping their
cells) treats both alike. The signal that arrived is remembered, because an interruption may be
caught and raised again as a plain KeyboardInterrupt on its way out; the command line then exits
with the shell's convention, 128 + the signal number: 130 for Ctrl-C, 143 for SIGTERM.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from dcbench.errors import DcbenchError

_received: list[int] = []  # signals turned into interruptions in this process, in order


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop as Ctrl-C would."""


class Interrupted(DcbenchError):
    """A run or sweep was stopped from outside; `exit_code` is 130 (Ctrl-C) or 143 (SIGTERM)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise Terminated(f"stopped by signal {signal.Signals(signum).name}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM end a run like Ctrl-C does, so that its record says 'interrupted' and
    `--resume` continues it. Main thread only (elsewhere it does nothing)."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(exc: BaseException | None = None) -> int:
    """128 + the signal that stopped us: 143 after SIGTERM, else 130 (Ctrl-C)."""
    if isinstance(exc, Terminated) or signal.SIGTERM in _received:
        return 128 + signal.SIGTERM
    return 128 + signal.SIGINT


def as_error(exc: KeyboardInterrupt, what: str) -> Interrupted:
    """The one-line error for an interrupted `what` (how to continue it), with its exit code."""
    how = "SIGTERM" if exit_code(exc) == 128 + signal.SIGTERM else "Ctrl-C"
    return Interrupted(f"interrupted ({how}); {what}", exit_code(exc))
