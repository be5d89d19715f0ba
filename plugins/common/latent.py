"""Code sizes shared by the methods, so that they compare at equal code size."""

from __future__ import annotations


def paper_latent_dim(input_shape: tuple[int, ...]) -> int:
    """The paper's code size d for this kind of input: 10 for grey images, 16 for colour
    images, 50 for volumes. Baselines use it too, so that methods compare at equal code size."""
    if len(input_shape) == 4:
        return 50
    return 16 if input_shape[0] == 3 else 10
