"""Statistics over seeds for the leaderboards: bootstrap confidence intervals and tied ranks.

Everything is a percentile bootstrap over the seeds of a row (a leaderboard line): the seeds are
the only repeated measurements we have, and with 2-10 of them no distribution can be assumed.
The random streams are fixed (seeded by a fixed seed and the row's values) so that re-rendering a
leaderboard gives identical Markdown, and the tests identical numbers.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
DIRECTIONS = ("max", "min")


def clean(values: Sequence[float | None]) -> np.ndarray:
    """The finite measurements of a row as sorted float64; None and NaN mean 'not measured'.
    Sorted, so that a row's resamples do not depend on the order its runs were appended in."""
    array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.sort(array[np.isfinite(array)])


@functools.lru_cache(maxsize=512)  # 512 rows x 2000 resamples x 8 bytes: 8 MB at most
def _cached_means(data: bytes, resamples: int, seed: int) -> np.ndarray:
    """resamples means of a row's values (float64 bytes of `clean`) drawn with replacement.

    The random stream is seeded by `seed` and the values themselves, so that
    - a row's resamples are the same wherever it is used (its CI and every comparison with it) and
      on every render: identical Markdown each time;
    - two rows with different values are resampled independently of each other (an unpaired
      comparison: seed k of one method has nothing to do with seed k of another);
    - the result can be cached: a leaderboard re-render after one appended run only resamples
      the row that changed (the concurrency test renders 400 times).
    """
    values = np.frombuffer(data, dtype=np.float64)
    words = np.frombuffer(hashlib.blake2b(data, digest_size=16).digest(), dtype=np.uint32)
    rng = np.random.default_rng([seed, *words.tolist()])
    # One (resamples, n) draw of indices: all resamples at once, no Python loop.
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    means.flags.writeable = False  # shared through the cache
    return means


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """The (1 - level) / 2 and (1 + level) / 2 percentiles, linearly interpolated as np.quantile
    does, from one np.partition: np.quantile's overhead dominated the cost of a render."""
    tail = (1.0 - level) / 2.0
    positions = np.array([tail, 1.0 - tail]) * (len(samples) - 1)
    lower = np.floor(positions).astype(np.intp)
    upper = np.minimum(lower + 1, len(samples) - 1)
    ordered = np.partition(samples, np.unique(np.concatenate([lower, upper])))
    low, high = ordered[lower] + (ordered[upper] - ordered[lower]) * (positions - lower)
    return float(low), float(high)


@functools.lru_cache(maxsize=4096)
def _mean_interval(data: bytes, level: float, resamples: int, seed: int) -> tuple[float, float]:
    return _interval(_cached_means(data, resamples, seed), level)


def bootstrap_mean_ci(values: Sequence[float | None], level: float = LEVEL, resamples: int = RESAMPLES,
                      seed: int = SEED) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the mean over seeds; None with fewer than 2
    values (one run has no spread to resample)."""
    array = clean(values)
    if len(array) < 2:
        return None
    return _mean_interval(array.tobytes(), level, resamples, seed)


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'max' or 'min', not {direction!r}")


@functools.lru_cache(maxsize=65536)
def _difference_interval(a: bytes, b: bytes, level: float, resamples: int, seed: int) -> tuple[float, float]:
    """Percentile interval of mean(a) - mean(b): the difference of the two rows' independent
    bootstrap means, resample by resample. Cached: a re-render only computes the pairs with the
    row that changed."""
    means_a = _cached_means(a, resamples, seed)
    means_b = _cached_means(b, resamples, seed)
    return _interval(means_a - means_b, level)


def _better(a: bytes, b: bytes, direction: str, level: float, resamples: int, seed: int) -> bool:
    """Whether row a (the bytes of its `clean` values) is significantly better than row b."""
    # A single run has no spread: nothing says how far its value would move with another seed, so
    # it can never be declared different from anything. Identical rows are not different either.
    if len(a) < 16 or len(b) < 16 or a == b:  # 16 bytes: two float64 values
        return False
    if a < b:
        low, high = _difference_interval(a, b, level, resamples, seed)
    else:  # the same pair the other way round: one computation (and cache entry) per pair
        high, low = (-x for x in _difference_interval(b, a, level, resamples, seed))
    return low > 0 if direction == "max" else high < 0


def significantly_better(a: Sequence[float | None], b: Sequence[float | None], direction: str,
                         level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED) -> bool:
    """Whether row a is significantly better than row b: the percentile-bootstrap interval (at
    `level`) of mean(a) - mean(b) lies entirely on a's better side of 0 (above for 'max', below
    for 'min'). False when either row has fewer than 2 values."""
    _check_direction(direction)
    return _better(clean(a).tobytes(), clean(b).tobytes(), direction, level, resamples, seed)


def tied_ranks(groups: list[list[float]], direction: str, level: float = LEVEL, resamples: int = RESAMPLES,
               seed: int = SEED) -> list[tuple[int, bool] | None]:
    """Per row: (rank, tied) or None for a row with no values (not measured: no rank).

    rank = 1 + the number of rows significantly better than it (`significantly_better`), so rows
    that no test separates share a rank; tied says whether another ranked row has the same rank.
    A row with a single value is separated from nothing, so it ranks 1 and ties with the best.
    """
    _check_direction(direction)
    rows = [clean(values).tobytes() for values in groups]
    ranks = [None if not row else
             1 + sum(_better(other, row, direction, level, resamples, seed) for other in rows)
             for row in rows]
    counts: dict[int, int] = {}
    for rank in ranks:
        if rank is not None:
            counts[rank] = counts.get(rank, 0) + 1
    return [None if rank is None else (rank, counts[rank] > 1) for rank in ranks]


def format_rank(rank: tuple[int, bool] | None) -> str:
    """'2', '1=' for a tie, 'n/a' for a row without values."""
    if rank is None:
        return "n/a"
    return f"{rank[0]}=" if rank[1] else str(rank[0])
