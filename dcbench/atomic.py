"""Atomic file writes: write to a temporary file beside the target, fsync, then rename.

A reader (or a crash) never sees a half-written file: it sees the old file or the new one.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path in target's folder; on success it replaces target atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes files 0600; give the usual permissions
    try:
        with signals_deferred():
            yield tmp_path
            with open(tmp_path, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends; they take effect right after it. A signal
    landing inside a writer written in C++ (torch.save's zip writer) would otherwise surface as
    an unrelated RuntimeError instead of an interruption."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_writable_folder(folder: Path, option: str) -> None:
    """Check that files can be written in `folder` (or, if it does not exist yet, that it can
    be created: its nearest existing parent takes a file), without leaving anything behind; a
    one-line error naming the folder and the option to change otherwise."""
    from dcbench.errors import DcbenchError

    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "a file is in the way", str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = reason if existing == Path(folder).absolute() else f"{existing}: {reason}"
        raise DcbenchError(f"cannot write to {folder} ({where}); choose another {option} or fix its "
                           "permissions") from None


def write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def write_with(target: Path, writer: Callable[[BinaryIO], None]) -> None:
    """Atomically write target through a function that writes to an open binary file
    (np.savez, torch.save, PIL's Image.save with a format...). A file object, not a path,
    because np.save and friends append their own suffix to paths."""
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        writer(handle)


def json_default(value: Any) -> Any:
    # numpy scalars and arrays, Paths: the common non-JSON types in records.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
