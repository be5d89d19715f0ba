"""`digits`: scikit-learn's embedded 8x8 handwritten digits, scaled to MNIST's 28x28 layout.

Needs no download, so it is the default dataset for demos and tests. Each 8x8 image is
resized to 20x20 and centred in a 28x28 frame (as MNIST digits sit in a 20x20 box).
The split is fixed: a stratified 500-image test set drawn with random_state 0.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from dcbench.api import DataBundle, Dataset, Split

TEST_SIZE = 500
SPLIT_SEED = 0


def _to_mnist_frame(images_8x8: np.ndarray) -> np.ndarray:
    """(N, 8, 8) values 0..16 -> (N, 1, 28, 28) float32 in [0, 1]."""
    out = np.zeros((len(images_8x8), 1, 28, 28), dtype=np.float32)
    for i, image in enumerate(images_8x8):
        small = Image.fromarray((image / 16.0 * 255).astype(np.uint8))
        out[i, 0, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.BILINEAR), dtype=np.float32) / 255
    return out


class Digits(Dataset):
    name = "digits"
    shape = (1, 28, 28)
    default_metrics = ("dscore", "sz", "sap", "recon")

    def load(self, seed: int) -> DataBundle:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        raw = load_digits()
        x = _to_mnist_frame(raw.images)
        labels = raw.target.astype(np.int64)
        train_idx, test_idx = train_test_split(np.arange(len(x)), test_size=TEST_SIZE, stratify=labels,
                                               random_state=SPLIT_SEED)
        train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
        return DataBundle(
            train=Split(x[train_idx], labels[train_idx]),
            test=Split(x[test_idx], labels[test_idx]),
            class_names=[str(d) for d in range(10)],
            provenance={"source": "sklearn.datasets.load_digits", "split": f"stratified, {TEST_SIZE} test, "
                        f"random_state={SPLIT_SEED}", "preprocessing": "8x8 -> 20x20 bilinear, centred in 28x28"},
        )
