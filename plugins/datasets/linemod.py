"""LineMod synthetic renders (BOP "lm_train"), cropped around each object as in the paper.

Per image: bounding box of the mask's nonzero pixels, 8 px margin on every side (zero-padded
where it crosses the image border, rather than wrapping through negative indices), crop,
resize to 64x64. Images are taken in sorted order per object: the first `n_train_per_object`
go to train, the rest to test. The result is cached as .npz keyed by the source's path, size
and mtime, so the PNGs are decoded once.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from dcbench.api import DataBundle, Dataset, Split
from dcbench.array_cache import load_arrays, save_arrays
from dcbench.errors import DataError
from dcbench.paths import dataset_cache

PAD = 8
SIZE = 64
N_TRAIN_PER_OBJECT = 1000
ZIP_NAME = "lm_train.zip"
# Bump when the preprocessing changes, so that old caches are not reused.
PREPROCESS_VERSION = 1
GET_HINT = (
    'download lm_train.zip (BOP LineMod "lm_train", from the BOP benchmark site '
    "https://bop.felk.cvut.cz/datasets/) and pass its folder as --data-root (no need to unzip)"
)
_ZIP_RGB = re.compile(r"^(?P<prefix>(?:.*/)?train/)(?P<obj>[^/]+)/rgb/(?P<n>[^/]+)\.png$")


@dataclass(frozen=True)
class Item:
    """One image of one object; rgb and mask are file paths or zip member names."""

    obj: str
    n: str
    rgb: str
    mask: str | None


def _natural(name: str) -> tuple[int, int, str]:
    # Zero-padded BOP names sort the same either way; unpadded numbers sort by value.
    return (0, int(name), name) if name.isdigit() else (1, 0, name)


# ------------------------------------------------------------------------------------ sources


class _FolderSource:
    """An extracted lm_train: <root>/train/<obj>/rgb/<n>.png and .../mask/<n>_000000.png."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.train = root / "train"

    def describe(self) -> str:
        return str(self.root)

    def items(self) -> list[Item]:
        items = []
        obj_dirs = sorted((d for d in self.train.iterdir() if (d / "rgb").is_dir()), key=lambda d: d.name)
        for obj_dir in obj_dirs:
            rgbs = sorted(obj_dir.glob("rgb/*.png"), key=lambda p: _natural(p.stem))
            for rgb in rgbs:
                mask = next((m for m in _mask_names(obj_dir / "mask", rgb.stem) if Path(m).is_file()), None)
                items.append(Item(obj_dir.name, rgb.stem, str(rgb), mask))
        return items

    def read(self, ref: str) -> bytes:
        return Path(ref).read_bytes()

    def where(self, ref: str) -> str:
        return ref

    def fingerprint(self, items: list[Item]) -> dict[str, Any]:
        # A folder's own mtime misses edits inside it: sum sizes and take the latest mtime.
        stats = [Path(ref).stat() for item in items for ref in (item.rgb, item.mask) if ref]
        return {
            "source": str(self.root.resolve()),
            "files": len(stats),
            "size": sum(s.st_size for s in stats),
            "mtime": max((s.st_mtime_ns for s in stats), default=0),
        }

    def close(self) -> None:
        pass


class _ZipSource:
    """lm_train.zip read in place; members may sit under any prefix (e.g. lm/train/...)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as error:
            raise DataError(f"{path} is not a readable zip ({error}); download it again") from None

    def describe(self) -> str:
        return str(self.path)

    def items(self) -> list[Item]:
        names = set(self.archive.namelist())
        found = [(m, match) for m in names if (match := _ZIP_RGB.match(m))]
        found.sort(key=lambda pair: (pair[1]["obj"], _natural(pair[1]["n"])))
        items = []
        for member, match in found:
            mask_dir = f"{match['prefix']}{match['obj']}/mask"
            mask = next((m for m in _mask_names(mask_dir, match["n"]) if m in names), None)
            items.append(Item(match["obj"], match["n"], member, mask))
        return items

    def read(self, ref: str) -> bytes:
        try:
            return self.archive.read(ref)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:
            raise DataError(
                f"{self.where(ref)} is corrupt ({error}); download {self.path.name} again"
            ) from None

    def where(self, ref: str) -> str:
        return f"{self.path}:{ref}"

    def fingerprint(self, items: list[Item]) -> dict[str, Any]:
        stat = self.path.stat()
        return {"source": str(self.path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns}

    def close(self) -> None:
        self.archive.close()


Source = _FolderSource | _ZipSource


def _mask_names(mask_dir: Path | str, n: str) -> list[str]:
    """BOP names masks <n>_000000.png (one per object instance); also accept <n>.png."""
    return [f"{mask_dir}/{n}_000000.png", f"{mask_dir}/{n}.png"]


def _candidates(root: Path) -> Iterator[Path]:
    """Where lm_train may lie under one root: the root itself, lm_train/ or lm/, or a zip."""
    if root.is_file():
        yield root
        return
    for folder in (root, root / "lm_train", root / "lm"):
        if (folder / "train").is_dir():
            yield folder
    if (root / ZIP_NAME).is_file():
        yield root / ZIP_NAME


def find_source(roots: list[Path]) -> Source | None:
    for root in roots:
        for candidate in _candidates(root):
            return _ZipSource(candidate) if candidate.is_file() else _FolderSource(candidate)
    return None


# ------------------------------------------------------------------------------ preprocessing


def _decode(data: bytes, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now, so that a truncated file fails here with its name
        return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{what} is not a readable PNG ({error}); fetch lm_train again") from None


def decode_rgb(data: bytes, what: str) -> np.ndarray:
    """(H, W, 3) uint8."""
    return np.asarray(_decode(data, what).convert("RGB"))


def decode_mask(data: bytes, what: str) -> np.ndarray:
    """(H, W) bool: any nonzero pixel (in any colour channel) belongs to the object."""
    image = _decode(data, what)
    if image.mode in ("1", "L", "I", "I;16", "F"):
        return np.asarray(image) > 0
    return np.asarray(image.convert("RGB")).any(axis=-1)


def crop_object(rgb: np.ndarray, mask: np.ndarray, what: str, pad: int = PAD, size: int = SIZE) -> np.ndarray:
    """Crop the mask's bounding box plus `pad` px per side from rgb (zeros outside the image),
    resize to size x size (bilinear). Returns (3, size, size) uint8."""
    if rgb.shape[:2] != mask.shape:
        raise DataError(f"{what}: image is {rgb.shape[1]}x{rgb.shape[0]} but its mask is "
                        f"{mask.shape[1]}x{mask.shape[0]}")
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise DataError(f"{what} has an empty mask (no object pixels); fetch lm_train again")
    top, bottom = int(rows.min()) - pad, int(rows.max()) + 1 + pad
    left, right = int(cols.min()) - pad, int(cols.max()) + 1 + pad
    canvas = np.zeros((bottom - top, right - left, 3), dtype=np.uint8)
    height, width = mask.shape
    y0, y1, x0, x1 = max(top, 0), min(bottom, height), max(left, 0), min(right, width)
    canvas[y0 - top:y1 - top, x0 - left:x1 - left] = rgb[y0:y1, x0:x1]
    resized = Image.fromarray(canvas).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized).transpose(2, 0, 1)


def _process_item(source: Source, item: Item) -> np.ndarray:
    rgb_where = source.where(item.rgb)
    if item.mask is None:
        raise DataError(
            f"{rgb_where} has no mask (looked for mask/{item.n}_000000.png and mask/{item.n}.png)"
        )
    rgb = decode_rgb(source.read(item.rgb), rgb_where)
    mask = decode_mask(source.read(item.mask), source.where(item.mask))
    return crop_object(rgb, mask, rgb_where)


def _group(items: list[Item]) -> dict[str, list[Item]]:
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.obj, []).append(item)
    return dict(sorted(groups.items()))


def preprocess(source: Source, items: list[Item], n_train: int) -> dict[str, np.ndarray]:
    """Crop every image; split each object's sorted images into the first n_train and the rest."""
    groups = _group(items)
    for obj, obj_items in groups.items():
        if len(obj_items) <= n_train:
            raise DataError(
                f"object {obj} in {source.describe()} has {len(obj_items)} images, but "
                f"n_train_per_object={n_train} leaves none for test; lower n_train_per_object"
            )
    parts: dict[str, list[Any]] = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    with tqdm(total=len(items), desc="linemod: preprocessing", unit="img") as bar:
        for label, obj_items in enumerate(groups.values()):
            for index, item in enumerate(obj_items):
                split = "train" if index < n_train else "test"
                parts[f"x_{split}"].append(_process_item(source, item))
                parts[f"y_{split}"].append(label)
                bar.update(1)
    arrays = {key: np.stack(value) if key.startswith("x") else np.asarray(value, dtype=np.int64)
              for key, value in parts.items()}
    arrays["class_names"] = np.asarray(list(groups), dtype=str)
    return arrays


# ------------------------------------------------------------------------------------- cache


def _cache_path(fingerprint: dict[str, Any], n_train: int) -> Path:
    key = dict(fingerprint, n_train_per_object=n_train, version=PREPROCESS_VERSION, pad=PAD, size=SIZE)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return dataset_cache("linemod") / f"linemod-{digest}.npz"


_KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")


# ------------------------------------------------------------------------------------ dataset


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    images = x.astype(np.float32)
    images /= 255.0
    return Split(x=images, content=y.astype(np.int64))


def n_train_of(value: Any) -> int:
    """The n_train_per_object option as a whole number >= 1 (text such as "5" from a direct
    construction is accepted; "2.5" and "abc" are not)."""
    try:
        n_train = int(value)
    except (TypeError, ValueError):
        n_train = 0
    if isinstance(value, bool) or n_train < 1 or str(n_train) != str(value).strip():
        raise DataError(f"n_train_per_object must be a positive integer, got {value!r}; set e.g. "
                        "--set data.n_train_per_object=1000")
    return n_train


class LineMod(Dataset):
    """BOP LineMod synthetic renders, 64x64 crops around the object; content = object.

    Options: n_train_per_object (default 1000, as in the paper).
    """

    name = "linemod"
    shape = (3, 64, 64)
    default_metrics = ("dscore", "sz", "sap", "recon")
    reported: dict[str, dict[str, float]] = {}
    reported_source = ""
    option_defaults = {"n_train_per_object": N_TRAIN_PER_OBJECT}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        n_train_of(options["n_train_per_object"])  # while planning; too many for the data is load()'s error

    def _n_train(self) -> int:
        return n_train_of(self.options.get("n_train_per_object", N_TRAIN_PER_OBJECT))

    def _roots(self) -> list[Path]:
        roots = [Path(self.data_root)] if self.data_root is not None else []
        return [*roots, dataset_cache("linemod")]

    def _source(self) -> Source:
        roots = self._roots()
        source = find_source(roots)
        if source is None:
            looked = ", ".join(str(root) for root in roots)
            raise DataError(
                f"LineMod not found (looked in: {looked}, for {ZIP_NAME} or a folder with "
                f"train/<obj>/rgb/ itself or under lm_train/ or lm/); {GET_HINT}"
            )
        return source

    def load(self, seed: int) -> DataBundle:
        n_train = self._n_train()
        source = self._source()
        try:
            items = source.items()
            if not items:
                raise DataError(f"{source.describe()} holds no train/<obj>/rgb/<n>.png images; {GET_HINT}")
            cache = _cache_path(source.fingerprint(items), n_train)
            arrays = load_arrays(cache, _KEYS)
            from_cache = arrays is not None
            if arrays is None:
                arrays = preprocess(source, items, n_train)
                save_arrays(cache, arrays)
        finally:
            source.close()
        return DataBundle(
            train=_split(arrays["x_train"], arrays["y_train"]),
            test=_split(arrays["x_test"], arrays["y_test"]),
            class_names=[str(name) for name in arrays["class_names"]],
            provenance={
                "source": source.describe(),
                "images": len(items),
                "objects": len(arrays["class_names"]),
                "n_train_per_object": n_train,
                "preprocessing": f"mask bounding box + {PAD}px margin (zero-padded at the image "
                                 f"border), crop, bilinear resize to {SIZE}x{SIZE}, /255; sorted order",
                "cache": str(cache),
                "decoded_from": "npz cache" if from_cache else "PNG files",
            },
        )
