"""Range checks of run settings, made while planning, before any run folder exists.

They are generic: whichever of these keys a method's configuration has is checked, whatever the
method, so third-party methods get them for free; a method's own rules (e.g. spectrum's
epochs == 1) stay in its `check_ready`. Typing (text to int, float, ...) is config.coerce's job;
this module only says whether a typed value is usable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any

from dcbench.errors import DcbenchError

SEED_MAX = 2**32 - 1  # numpy's and most libraries' seed range
AT_LEAST_ONE = ("epochs", "batch_size")  # whole numbers >= 1
DATA_SIZES = ("data.train_size", "data.test_size")  # whole numbers >= 0 (0: every input)


def is_whole(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_seed(seed: Any, option: str = "--seed") -> None:
    if not is_whole(seed) or not 0 <= seed <= SEED_MAX:
        raise DcbenchError(f"{option} must be a whole number from 0 to {SEED_MAX}, got {seed!r}; choose a seed "
                           "in that range")


def check_seeds(seeds: Iterable[int], option: str = "--seeds") -> None:
    for seed in seeds:
        check_seed(seed, option)


def is_learning_rate(key: str) -> bool:
    return key == "lr" or key.endswith("_lr")


def check_method_config(config: dict[str, Any], method: str) -> None:
    """epochs and batch_size whole and >= 1; learning rates (lr, *_lr) finite and > 0."""
    for key, value in config.items():
        if key in AT_LEAST_ONE and not (is_whole(value) and value >= 1):
            raise DcbenchError(f"setting '{key}' of {method} must be a whole number >= 1, got {value!r}; "
                               f"set it with --set {key}=N")
        if is_learning_rate(key) and not (isinstance(value, Real) and not isinstance(value, bool)
                                          and math.isfinite(value) and value > 0):
            raise DcbenchError(f"setting '{key}' of {method} must be a finite number > 0, got {value!r}; "
                               f"set it with e.g. --set {key}=1e-4")


def check_data_settings(data_settings: dict[str, Any]) -> None:
    """data.train_size / data.test_size whole and >= 0 (0 means every input)."""
    for key in DATA_SIZES:
        value = data_settings.get(key, 0)
        if not (is_whole(value) and value >= 0):
            raise DcbenchError(f"setting '{key}' must be a whole number >= 0 (0: every input), got {value!r}; "
                               f"set it with --set {key}=N")
