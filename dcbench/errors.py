"""Errors that the CLI reports as one line, without a traceback."""

from __future__ import annotations


class DcbenchError(Exception):
    """A problem the user can fix: the message says what was wrong and what to do."""


class UnknownNameError(DcbenchError):
    pass


class DataError(DcbenchError):
    """Missing, corrupt or mis-shaped input data."""


class TrainingDiverged(DcbenchError):
    """A loss became NaN or infinite; the run is marked failed and its record kept."""


class PluginError(DcbenchError):
    """A plugin is broken or two plugins claim one name."""
