"""A deliberately simple method: principal components of the flattened inputs.

The first `latent_dim` components are called content, the next `latent_dim` transformation.
It is generative: decoding maps the concatenated codes back through the components.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dcbench.api import Codes, Method, RunContext, Split


class PCASplit(Method):
    name = "pca-split"
    generative = True

    @classmethod
    def default_config(cls, preset: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
        # PCA has no epochs; dcbench expects the key, and one "epoch" is one fit.
        return {"epochs": 1, "latent_dim": 10 if preset == "paper" else 4}

    @classmethod
    def supports(cls, input_shape: tuple[int, ...]) -> str | None:
        return None if len(input_shape) == 3 else "handles 2D images only"

    def fit(self, train: Split, context: RunContext) -> None:
        flat = train.x.reshape(len(train.x), -1).astype(np.float64)
        self.mean = flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat - self.mean, full_matrices=False)
        self.components = vt[: 2 * int(self.config["latent_dim"])]
        residual = flat - self.mean - (flat - self.mean) @ self.components.T @ self.components
        context.on_epoch(0, {"residual_mse": float((residual**2).mean())})

    def encode(self, x: np.ndarray) -> Codes:
        codes = (x.reshape(len(x), -1) - self.mean) @ self.components.T
        d = int(self.config["latent_dim"])
        return Codes(content=codes[:, :d], transformation=codes[:, d:])

    def decode(self, content: np.ndarray, transformation: np.ndarray) -> np.ndarray:
        flat = np.concatenate([content, transformation], axis=1) @ self.components + self.mean
        return np.clip(flat, 0, 1).reshape(len(flat), *self.input_shape).astype(np.float32)

    def save(self, path: Path) -> None:
        # Plain arrays in an .npz (never a pickle), so loading cannot run code.
        with open(path, "wb") as handle:
            np.savez(handle, mean=self.mean, components=self.components,
                     config=np.array(json.dumps(self.config)))

    def load_state(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as state:
            self.mean, self.components = state["mean"], state["components"]
