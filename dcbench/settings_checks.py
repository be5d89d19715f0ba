"""Range checks of run settings, made while planning, before any run folder exists.

The rules here are generic: whichever of these keys a method's configuration has is checked,
whatever the method, so third-party methods get them for free:

- every float setting is finite (no nan / inf), data options included;
- `epochs`, `batch_size`, `latent_dim`, `lr_step_epochs`: whole numbers >= 1;
- `lr` and any `*_lr`: finite numbers > 0; `lr_gamma` (a step decay): in (0, 1];
- any `*_weight` (a loss weight): a finite number >= 0;
- `data.train_size` / `data.test_size`: whole numbers >= 0 (0: every input); seeds 0..2^32-1.

A method's own ranges live in its `Method.check_config` and a dataset's in `Dataset.check_options`
(both called while planning); `require_whole` / `require_number` below give them the same
one-line messages. Typing (text to int, float, ...) is config.coerce's job; this module only
says whether a typed value is usable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import Any

from dcbench.errors import DcbenchError

SEED_MAX = 2**32 - 1  # numpy's and most libraries' seed range
AT_LEAST_ONE = ("epochs", "batch_size", "latent_dim", "lr_step_epochs")  # whole numbers >= 1
DATA_SIZES = ("data.train_size", "data.test_size")  # whole numbers >= 0 (0: every input)


def is_whole(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number (bools are not numbers here: `True` is not a learning rate)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def check_seed(seed: Any, option: str = "--seed") -> None:
    if not is_whole(seed) or not 0 <= seed <= SEED_MAX:
        raise DcbenchError(f"{option} must be a whole number from 0 to {SEED_MAX}, got {seed!r}; choose a seed "
                           "in that range")


def check_seeds(seeds: Iterable[int], option: str = "--seeds") -> None:
    for seed in seeds:
        check_seed(seed, option)


def is_learning_rate(key: str) -> bool:
    return key == "lr" or key.endswith("_lr")


def _owner(owner: str) -> str:
    return f" of {owner}" if owner else ""


def require_whole(config: dict[str, Any], key: str, owner: str = "", least: int = 1, most: int | None = None,
                  meaning: str = "") -> None:
    """config[key] a whole number in least..most, else a one-line DcbenchError naming the key.
    `meaning` (e.g. "0: off") is added to the message."""
    value = config[key]
    if is_whole(value) and value >= least and (most is None or value <= most):
        return
    bound = f">= {least}" if most is None else f"from {least} to {most}"
    note = f" ({meaning})" if meaning else ""
    raise DcbenchError(f"setting '{key}'{_owner(owner)} must be a whole number {bound}{note}, got {value!r}; "
                       f"set it with --set {key}=N")


def require_number(config: dict[str, Any], key: str, owner: str = "", above: float | None = None,
                   least: float | None = None, most: float | None = None, meaning: str = "") -> None:
    """config[key] a finite number, > above / >= least / <= most where given, else a one-line
    DcbenchError naming the key."""
    value = config[key]
    if is_number(value) and (above is None or value > above) and (least is None or value >= least) \
            and (most is None or value <= most):
        return
    bounds = [f"> {above:g}" if above is not None else "", f">= {least:g}" if least is not None else "",
              f"<= {most:g}" if most is not None else ""]
    bound = " and ".join(b for b in bounds if b)
    note = f" ({meaning})" if meaning else ""
    raise DcbenchError(f"setting '{key}'{_owner(owner)} must be a finite number{' ' + bound if bound else ''}"
                       f"{note}, got {value!r}; set it with --set {key}=VALUE")


def check_method_config(config: dict[str, Any], method: str) -> None:
    """The generic rules of the module docstring, for whichever keys `config` has."""
    for key, value in config.items():
        if key in AT_LEAST_ONE:
            require_whole(config, key, method)
        elif is_learning_rate(key):
            require_number(config, key, method, above=0)
        elif key == "lr_gamma":  # StepLR's factor: 0 stops learning, > 1 makes the rate grow without bound
            require_number(config, key, method, above=0, most=1, meaning="the learning rate's step decay")
        elif key.endswith("_weight") and isinstance(value, Real) and not isinstance(value, bool):  # < 0 flips a term
            require_number(config, key, method, least=0)
        elif isinstance(value, float) and not math.isfinite(value):  # any float: nan / inf never mean anything
            require_number(config, key, method)


def check_data_settings(data_settings: dict[str, Any]) -> None:
    """data.train_size / data.test_size whole and >= 0 (0 means every input); every float
    dataset option finite (the dataset's own ranges are its check_options')."""
    for key in DATA_SIZES:
        require_whole({key: data_settings.get(key, 0)}, key, least=0, meaning="0: every input")
    for key, value in data_settings.items():
        if isinstance(value, float) and not math.isfinite(value):
            require_number(data_settings, key)
