"""Figures a run leaves in its folder.

The transfer grid: one test image per class. Cell (row i, column j) is Dec(c of column image j,
z of row image i), so content stays constant down a column and the transformation along a row.
The top row shows the column images and the left column the row images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dcbench import atomic
from dcbench.api import Method, Split
from dcbench.finite import checked_decode


def one_per_class(split: Split) -> np.ndarray:
    """Index of the first test input of each class, in class order (deterministic)."""
    classes = np.unique(split.content)
    return np.array([int(np.flatnonzero(split.content == k)[0]) for k in classes])


def displayable(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) images or (N, 1, D, H, W) volumes -> (N, H, W, 3) uint8, volumes by their
    central slice, each image min-max scaled only when it leaves [0, 1]."""
    if x.ndim == 5:
        x = x[:, :, x.shape[2] // 2]
    x = x.astype(np.float32)
    if x.min() < 0 or x.max() > 1:
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        hi = x.max(axis=(1, 2, 3), keepdims=True)
        x = (x - lo) / np.maximum(hi - lo, 1e-8)
    x = np.clip(x, 0, 1)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return (x.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


def tile(cells: list[list[np.ndarray | None]], pad: int = 2, scale: int = 2) -> Image.Image:
    """Lay out a grid of HxWx3 uint8 images (None = blank) on a grey background."""
    h, w = next(c for row in cells for c in row if c is not None).shape[:2]
    rows, cols = len(cells), len(cells[0])
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 96, dtype=np.uint8)
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            if cell is not None:
                y, x = pad + i * (h + pad), pad + j * (w + pad)
                canvas[y:y + h, x:x + w] = cell
    image = Image.fromarray(canvas)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def transfer_grid(method: Method, test: Split, target: Path) -> Path:
    """Write the transfer grid PNG for a generative method."""
    idx = one_per_class(test)
    inputs = test.x[idx]
    codes = method.encode(inputs)
    n = len(idx)
    content = np.tile(codes.content, (n, 1))  # column j's content, repeated for each row
    transformation = np.repeat(codes.transformation, n, axis=0)  # row i's transformation
    shown = displayable(inputs)
    decoded = checked_decode(method, content, transformation, "the transfer grid")
    generated = displayable(decoded).reshape(n, n, *shown.shape[1:])
    cells: list[list[np.ndarray | None]] = [[None, *shown]]
    for i in range(n):
        cells.append([shown[i], *generated[i]])
    image = tile(cells)
    atomic.write_with(target, lambda handle: image.save(handle, format="PNG"))
    return target


def volume_montage(volumes: np.ndarray, target: Path, step: int = 1) -> Path:
    """Slice-by-slice montage (as in the paper's volume figures): one row per volume of
    `volumes` (V, D, H, W) or (V, 1, D, H, W), one column per `step`-th slice along the first
    spatial axis; each volume is scaled to its own min-max so rows stay comparable slice to slice."""
    volumes = np.asarray(volumes, dtype=np.float32)
    if volumes.ndim == 5:
        volumes = volumes[:, 0]
    if volumes.ndim != 4:
        raise ValueError(f"need (V, D, H, W) volumes, got shape {volumes.shape}")
    lo = volumes.min(axis=(1, 2, 3), keepdims=True)
    hi = volumes.max(axis=(1, 2, 3), keepdims=True)
    scaled = (volumes - lo) / np.maximum(hi - lo, 1e-8)
    grey = (scaled[:, ::step] * 255).round().astype(np.uint8)
    cells: list[list[np.ndarray | None]] = [[np.repeat(s[..., None], 3, axis=-1) for s in volume] for volume in grey]
    image = tile(cells)
    atomic.write_with(target, lambda handle: image.save(handle, format="PNG"))
    return target
