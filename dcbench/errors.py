"""Errors that the CLI reports as one line, without a traceback."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable


class DcbenchError(Exception):
    """A problem the user can fix: the message says what was wrong and what to do."""


class UnknownNameError(DcbenchError):
    pass


def unknown_name_message(kind: str, name: str, available: Iterable[str]) -> str:
    """'unknown KIND 'NAME': did you mean ...? available: ...' for a name that is not one of `available`."""
    available = list(available)
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"unknown {kind} '{name}': {hint}available: {', '.join(available) or '(none)'}"


class DataError(DcbenchError):
    """Missing, corrupt or mis-shaped input data."""


class TrainingDiverged(DcbenchError):
    """A loss became NaN or infinite; the run is marked failed and its record kept."""


class PluginError(DcbenchError):
    """A plugin is broken or two plugins claim one name."""


class DcbenchWarning(UserWarning):
    """Something dcbench worked around that the user should know about (a leaderboard line it
    skipped, a page it could not re-render); the command line shows it as one 'warning:' line."""


def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   line: str | None = None) -> str:
    """warnings.formatwarning for the command line: a DcbenchWarning is one 'warning: ...' line
    (no source file and line of dcbench's own code); other warnings keep Python's format."""
    if issubclass(category, DcbenchWarning):
        return f"warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning
