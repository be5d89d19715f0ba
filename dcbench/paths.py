"""Where dcbench keeps downloaded and preprocessed data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of dcbench's data cache: $DCBENCH_CACHE, else $XDG_CACHE_HOME/dcbench, else ~/.cache/dcbench."""
    if os.environ.get("DCBENCH_CACHE"):
        return Path(os.environ["DCBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dcbench"


def dataset_cache(name: str) -> Path:
    """Cache folder of one dataset (not created here)."""
    return cache_dir() / name
