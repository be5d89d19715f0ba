"""How a `dcbench` command ends when it fails: one line on stderr and an exit status.

1 for errors (user errors, a full disk, a bug in a plugin), 2 for usage errors (click's), 130
for Ctrl-C and 143 for SIGTERM (128 + the signal, as shells report them; dcbench.interrupts).
"""

from __future__ import annotations

import errno
import os

import click

from dcbench.errors import DcbenchError

DEBUG_ENV = "DCBENCH_DEBUG"
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def report(exc: Exception | KeyboardInterrupt) -> int:
    """Print the one line for `exc` and return the exit status. With DCBENCH_DEBUG set, an
    unexpected exception is raised again, for its traceback."""
    if isinstance(exc, click.exceptions.Abort):
        click.echo("aborted", err=True)
        return 130
    if isinstance(exc, click.ClickException):
        exc.show()
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):  # outside a run (e.g. while plugins load): nothing to record
        from dcbench.interrupts import as_error

        exc = as_error(exc, "nothing was recorded")
    if isinstance(exc, DcbenchError):
        click.echo(f"error: {exc}", err=True)
        return getattr(exc, "exit_code", 1)  # interrupts.Interrupted: 130 or 143
    if os.environ.get(DEBUG_ENV):
        raise exc
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        # A full disk or a folder that turned read-only mid-run: the record says how far it got.
        where = f" {exc.filename}" if exc.filename else ""
        click.echo(f"error: cannot write{where}: {exc.strerror}; free some space or choose another "
                   "--runs-dir / --leaderboard-dir, then rerun with --resume", err=True)
    else:
        click.echo(f"error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback)", err=True)
    return 1
