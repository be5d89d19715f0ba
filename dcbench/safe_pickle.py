"""Load pickles of plain numpy arrays without running code from the file.

Pickles can call any importable function while loading, so a downloaded pickle is untrusted
input. The unpickler here resolves only the handful of globals that numpy needs to rebuild
arrays and scalars; tuples, lists, dicts, strings and numbers need no globals at all. Anything
else is refused with a DataError before it is called.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from dcbench.errors import DataError

try:  # numpy >= 2 (and the forward-compatibility shims of numpy 1.26)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - older numpy
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

GZIP_MAGIC = b"\x1f\x8b"


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Stand-in for `_codecs.encode`, which Python 3 writes into protocol <= 2 pickles to carry
    bytes (an array's raw buffer). Only the latin1 round trip is accepted: other codecs (zlib,
    bz2...) would let a small file expand into a huge one."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    if not isinstance(text, str):
        raise pickle.UnpicklingError("_codecs.encode of a non-string is not allowed")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # Old pickles name numpy.core, numpy >= 2 writes numpy._core: both map to the real objects,
    # which also avoids importing numpy.core's deprecation shim.
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = _multiarray.scalar
        # Protocol 5 pickles rebuild arrays from a raw buffer through _frombuffer.
        allowed[(f"{package}.numeric", "_frombuffer")] = _numeric._frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], source: str) -> None:
        # latin1: Python 2 pickles (the classic mnist.pkl.gz) store array bytes as str.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"refused to load {self._source}: the pickle asks for '{module}.{name}', "
                "but only plain numpy arrays may be loaded; the file is not what it claims to be: do not use "
                "it, and fetch it again from its original source"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"refused to load {self._source}: the pickle uses persistent ids")


def _describe(path_or_fileobj: str | Path | IO[bytes]) -> str:
    if isinstance(path_or_fileobj, (str, Path)):
        return str(path_or_fileobj)
    return str(getattr(path_or_fileobj, "name", "<stream>"))


def _is_gzip(stream: IO[bytes]) -> bool:
    """Peek at the first two bytes and rewind."""
    start = stream.tell()
    head = stream.read(2)
    stream.seek(start)
    return head == GZIP_MAGIC


def _seekable(stream: IO[bytes]) -> IO[bytes]:
    return stream if stream.seekable() else io.BytesIO(stream.read())


def _unpickle(stream: IO[bytes], gzipped: bool | None, source: str) -> object:
    if gzipped is None:
        stream = _seekable(stream)
        gzipped = _is_gzip(stream)
    if gzipped:
        with gzip.GzipFile(fileobj=stream, mode="rb") as unzipped:
            # Buffering matters: the unpickler issues many tiny reads.
            return _NumpyOnlyUnpickler(io.BufferedReader(unzipped, 1 << 20), source).load()
    return _NumpyOnlyUnpickler(stream, source).load()


# What a truncated or corrupt pickle / gzip stream raises from inside pickle, gzip and numpy.
_CORRUPT = (
    pickle.UnpicklingError, EOFError, OSError, zlib.error, ValueError, TypeError,
    AttributeError, IndexError, KeyError, UnicodeDecodeError, OverflowError,
)


def load_numpy_pickle(path_or_fileobj: str | Path | IO[bytes], *, gzipped: bool | None = None) -> object:
    """Unpickle a file that holds numpy arrays (possibly inside tuples, lists and dicts).

    gzipped: True/False to force, None to detect from the gzip magic bytes. Refused globals and
    truncated or corrupt files raise DataError naming the file; nothing in the file is executed
    beyond numpy's own array constructors.
    """
    source = _describe(path_or_fileobj)
    try:
        if isinstance(path_or_fileobj, (str, Path)):
            with open(path_or_fileobj, "rb") as handle:
                return _unpickle(handle, gzipped, source)
        return _unpickle(path_or_fileobj, gzipped, source)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{source} does not exist") from None
    except _CORRUPT as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"{source} is truncated, corrupt or not a plain numpy pickle ({reason}); fetch it again"
        ) from None
