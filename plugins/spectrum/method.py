"""`spectrum`: a training-free baseline whose content code cannot depend on pose.

Content code: each input's radially averaged power spectrum. |FFT|^2 of the input is averaged
over `n_shells` equal-width shells of spatial frequency spanning radius 0 to Nyquist (spherical
shells for volumes, rings for images, per channel or summed over channels; frequencies beyond
Nyquist, the corners of the grid, are left out). A rotation about the centre turns the spectrum
with it and a shift changes only its phases, so the shell averages are unchanged by a shift
and, up to interpolation, by any rotation (exactly by 90-degree turns, which map the frequency
grid onto itself). The shell powers are logged (floored at `log_floor` x the input's mean
power, where interpolation and rounding errors would dominate), standardised with the
training split's mean and std, and projected by PCA (fit on the training split) to the content
size dcbench's other methods use for that input shape (DualContrast's: 10 grey images, 16
colour, 50 volumes), capped at the number of features. On subtomo-sim at SNR 0.1 such codes
cluster by composition (issue 13: 15 shells, PCA to 8, k-means: ARI(composition) 0.97; at the
defaults, all 15 components, 1.00).

Transformation code: PCA of the mean-centred raw inputs (fit on the training split) to the same
size. It is honest rather than good: it reads whatever varies most between inputs, pose and
content alike, so it is pose-dependent but not disentangled (expect a high D(c|z)).

There is no gradient training: fit() computes the features and the two PCAs in one pass, the
run's single "epoch" (`epochs` must stay 1). Everything is deterministic (exact SVD for the
content; seeded randomized SVD with sign fixing for the raw inputs). The state is plain arrays
in an .npz, never a pickle. Not generative: there is no decoder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from dcbench.api import Codes, Method, RunContext, Split
from dcbench.errors import DcbenchError

BATCH = 64  # inputs per FFT batch: bounds the float64 spectra held at once (~20 MB for 32^3)
NYQUIST = 0.5  # cycles per voxel/pixel
MAX_SHELLS = 256  # far more than any grid resolves (32^3: 16 frequencies from 0 to Nyquist); bounds memory


def check_settings(config: dict[str, Any]) -> None:
    """One-line errors for settings spectrum cannot use (called before any work)."""
    if config["epochs"] != 1:
        raise DcbenchError(f"spectrum is training-free and fits in one pass: epochs must be 1, got {config['epochs']}"
                           " (leave out --epochs / --set epochs)")
    for key, least in (("n_shells", 1), ("content_dim", 1), ("transformation_dim", 0)):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise DcbenchError(f"spectrum setting {key} must be a whole number >= {least}, got {value!r}")
    if config["n_shells"] > MAX_SHELLS:
        raise DcbenchError(f"spectrum setting n_shells must be at most {MAX_SHELLS}, got {config['n_shells']}")
    floor = config["log_floor"]
    if isinstance(floor, bool) or not isinstance(floor, int | float) or not math.isfinite(floor) or floor <= 0:
        raise DcbenchError(f"spectrum setting log_floor must be a number > 0, got {floor!r}")
    if not isinstance(config["per_channel"], bool):
        raise DcbenchError(f"spectrum setting per_channel must be true or false, got {config['per_channel']!r}")


def shell_weights(spatial: tuple[int, ...], n_shells: int) -> np.ndarray:
    """(M, n_shells) matrix that turns the power on the rfftn grid of a real array of shape
    `spatial` (M frequencies) into the mean power of each shell of the full FFT grid.

    Shells are `n_shells` equal widths of radius from 0 to Nyquist (Nyquist itself in the last);
    frequencies beyond Nyquist (the grid's corners, not sampled in every direction) are left
    out. rfftn keeps half the frequencies; each one off the last axis's 0 and Nyquist planes
    stands for its conjugate too (same power), so it counts twice. The result equals the average
    over the full grid and depends on the radius alone, which keeps 90-degree turns exact.
    (Sharing each frequency between neighbouring shells instead halves the code's movement under
    arbitrary 2D rotations but lowered ARI(composition) on subtomo-sim, 1.00 -> 0.99 at 15
    components and 0.975 -> 0.943 at 8, so the shells keep hard edges.)"""
    freqs = [np.fft.fftfreq(n) for n in spatial[:-1]] + [np.fft.rfftfreq(spatial[-1])]
    grids = np.meshgrid(*freqs, indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids)).ravel()
    count = np.full(grids[0].shape, 2.0)
    count[..., 0] = 1.0
    if spatial[-1] % 2 == 0:
        count[..., -1] = 1.0
    inside = np.flatnonzero(radius <= NYQUIST + 1e-12)
    shell = np.minimum((radius[inside] / NYQUIST * n_shells).astype(np.int64), n_shells - 1)
    weights = np.zeros((len(radius), n_shells))
    weights[inside, shell] = count.ravel()[inside]
    totals = weights.sum(0)
    # An empty shell (more shells than the grid resolves) gets zero power: a constant feature,
    # which standardisation and PCA then ignore.
    return weights / np.where(totals > 0, totals, 1.0)


def radial_power_features(x: np.ndarray, n_shells: int, per_channel: bool, log_floor: float) -> np.ndarray:
    """log shell powers of inputs (N, C, *spatial): (N, C * n_shells) per channel, else (N, n_shells)."""
    spatial = tuple(x.shape[2:])
    weights = shell_weights(spatial, n_shells)
    axes = tuple(range(2, x.ndim))
    out = []
    for start in range(0, len(x), BATCH):
        batch = np.asarray(x[start:start + BATCH], dtype=np.float64)
        power = np.abs(np.fft.rfftn(batch, axes=axes)) ** 2  # (B, C, *rfft grid)
        # The floor is relative to the input's own mean power over all frequencies (its sum of
        # squares, by Parseval): the features then do not depend on the inputs' units (rescaling
        # an input shifts all its logs alike), and shells more than 1/log_floor below the
        # input's mean power, where interpolation and rounding errors dominate, are clamped.
        floor = log_floor * (batch**2).sum(axis=axes)[..., None]  # (B, C, 1)
        if not per_channel:
            power, floor = power.sum(1, keepdims=True), floor.sum(1, keepdims=True)
        shells = power.reshape(len(batch), power.shape[1], -1) @ weights  # (B, C', n_shells)
        out.append(np.log(np.maximum(shells, np.maximum(floor, np.finfo(np.float64).tiny))).reshape(len(batch), -1))
    return np.concatenate(out)


class Spectrum(Method):
    name = "spectrum"
    generative = False

    @classmethod
    def default_config(cls, preset: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
        # The code size other methods use for this shape, so that k-means and probes compare alike.
        from dcbench_plugins.common.latent import paper_latent_dim

        size = paper_latent_dim(tuple(input_shape))
        # The same settings at both presets: nothing here trades time for quality.
        return {"epochs": 1, "n_shells": 15, "content_dim": size, "transformation_dim": size,
                "per_channel": True, "log_floor": 1e-6}

    @classmethod
    def supports(cls, input_shape: tuple[int, ...]) -> str | None:
        if len(input_shape) == 3 or (len(input_shape) == 4 and input_shape[0] == 1):
            return None
        return f"handles (C, H, W) images and (1, D, H, W) volumes, not {'x'.join(map(str, input_shape))}"

    @classmethod
    def check_config(cls, config: dict[str, Any], input_shape: tuple[int, ...]) -> None:
        check_settings(config)

    def __init__(self, config: dict[str, Any], input_shape: tuple[int, ...], device: str, seed: int) -> None:
        super().__init__(config, input_shape, device, seed)
        check_settings(config)
        self.device = "cpu"  # numpy only, whatever --device says
        self.settings = {key: config[key] for key in ("n_shells", "per_channel", "log_floor")}
        self.arrays: dict[str, np.ndarray] = {}

    def features(self, x: np.ndarray) -> np.ndarray:
        """The log radial power spectrum of each input, (N, F)."""
        return radial_power_features(x, int(self.settings["n_shells"]), bool(self.settings["per_channel"]),
                                     float(self.settings["log_floor"]))

    def fit(self, train: Split, context: RunContext) -> None:
        features = self.features(train.x)
        mean, std = features.mean(0), features.std(0)
        std = np.where(std > 1e-12, std, 1.0)  # constant features (empty shells) stay 0
        standard = (features - mean) / std
        content_mean, content_axes, content_kept = _pca_exact(standard, int(self.config["content_dim"]))
        flat = train.x.reshape(len(train.x), -1)
        raw_mean, raw_axes, raw_kept = _pca_randomized(flat, int(self.config["transformation_dim"]), self.seed)
        self.arrays = {"feature_mean": mean, "feature_std": std, "content_mean": content_mean,
                       "content_axes": content_axes, "raw_mean": raw_mean, "raw_axes": raw_axes}
        context.on_epoch(0, {"content_variance_kept": content_kept, "transformation_variance_kept": raw_kept})

    def encode(self, x: np.ndarray) -> Codes:
        if not self.arrays:
            raise DcbenchError("spectrum must be fitted (or its state loaded) before encoding")
        a = self.arrays
        if len(x) == 0:
            sizes = len(a["content_axes"]), len(a["raw_axes"])
            return Codes(np.zeros((0, sizes[0]), np.float32), np.zeros((0, sizes[1]), np.float32))
        standard = (self.features(x) - a["feature_mean"]) / a["feature_std"]
        content = (standard - a["content_mean"]) @ a["content_axes"].T
        flat = x.reshape(len(x), -1)
        transformation = np.concatenate([(np.asarray(flat[i:i + BATCH], np.float64) - a["raw_mean"]) @ a["raw_axes"].T
                                         for i in range(0, len(x), BATCH)])
        return Codes(content.astype(np.float32), transformation.astype(np.float32))

    def save(self, path: Path) -> None:
        # Plain arrays plus the feature settings as JSON text: np.load never needs pickle for it.
        state = {"settings": json.dumps(self.settings), "input_shape": np.asarray(self.input_shape, np.int64)}
        with open(path, "wb") as handle:
            np.savez(handle, **self.arrays, **state)

    def load_state(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as state:
            shape = tuple(int(n) for n in state["input_shape"])
            if shape != self.input_shape:
                raise DcbenchError(f"{path} holds a spectrum state for inputs {shape}, not {self.input_shape}")
            self.settings = json.loads(str(state["settings"]))
            self.arrays = {key: state[key] for key in
                           ("feature_mean", "feature_std", "content_mean", "content_axes", "raw_mean", "raw_axes")}


def _fix_signs(axes: np.ndarray) -> np.ndarray:
    """Flip each axis so that its largest-magnitude entry is positive: SVD signs are arbitrary."""
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])
    return axes * np.where(signs == 0, 1.0, signs)[:, None]


def _pca_exact(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean, (k', F) principal axes, fraction of variance they keep), k' = min(k, N, F)."""
    mean = x.mean(0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(k, len(vt))
    total = float((s**2).sum())
    return mean, _fix_signs(vt[:k]), float((s[:k] ** 2).sum() / total) if total > 0 else 1.0


def _pca_randomized(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """As _pca_exact for wide data (N x 32^3 volumes): sklearn's seeded randomized SVD."""
    mean = x.mean(0, dtype=np.float64)
    k = min(k, *x.shape)
    if k == 0:
        return mean, np.zeros((0, x.shape[1])), 0.0
    from sklearn.decomposition import PCA

    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(x)
    return mean, _fix_signs(pca.components_.astype(np.float64)), float(pca.explained_variance_ratio_.sum())
