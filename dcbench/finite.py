"""Checks that a method's codes and decoded outputs are finite numbers.

A method that returns NaN or infinite codes (a diverged training, a division by zero in a
third-party encode()) would otherwise fail later inside some metric or figure library with a
message that names neither the method nor the inputs; these checks fail first, in one line.
"""

from __future__ import annotations

import numpy as np

from dcbench.api import Codes, Method
from dcbench.errors import DcbenchError


def nonfinite_rows(array: np.ndarray) -> int:
    """How many rows (inputs) of `array` hold a NaN or an infinity."""
    array = np.atleast_1d(np.asarray(array))
    if array.size == 0 or not np.issubdtype(array.dtype, np.number):
        return 0
    return int((~np.isfinite(array.reshape(len(array), -1))).any(axis=1).sum())


def check_codes(method: str, codes: Codes, split: str) -> None:
    """One line naming the method, the code and how many of the split's inputs, if any code is
    not finite."""
    for kind, array in (("content", codes.content), ("transformation", codes.transformation)):
        bad = nonfinite_rows(array)
        if bad:
            raise DcbenchError(f"method '{method}' returned non-finite {kind} codes (NaN or infinity) for {bad} of "
                               f"{len(array)} {split} inputs; the run is marked failed: check the method's training "
                               "(a diverged loss) or its encode()")


def checked_decode(method: Method, content: np.ndarray, transformation: np.ndarray, purpose: str) -> np.ndarray:
    """method.decode(content, transformation), refused in one line if any output is not finite."""
    decoded = method.decode(content, transformation)
    bad = nonfinite_rows(decoded)
    if bad:
        name = getattr(method, "name", type(method).__name__)
        raise DcbenchError(f"method '{name}' decoded non-finite outputs (NaN or infinity) for {bad} of "
                           f"{len(decoded)} code pairs ({purpose}); the run is marked failed: check the method's "
                           "training (a diverged loss) or its decode()")
    return decoded
