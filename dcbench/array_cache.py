"""Preprocessed arrays cached as .npz files: plain arrays only (never pickles), written
atomically, and a missing or unreadable file reads as "not cached" so it is rebuilt."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dcbench import atomic


def load_arrays(path: Path, keys: Iterable[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays under `keys`, or None if the file is absent, unreadable or lacks a key."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in keys}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays uncompressed (so loading stays fast), atomically."""
    atomic.write_with(path, lambda handle: np.savez(handle, **arrays))
