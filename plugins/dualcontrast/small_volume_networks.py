"""DualContrast's `small` volume networks, for the `quick` preset on prepared (low-passed,
binned) subtomograms; the `paper` preset keeps the paper's networks (networks.py) exactly.

Encoder: Conv3d k4 s2 p1 1->16->32->64 with leaky ReLU (the paper's trunk at half the width,
one layer shorter), flatten, Linear -> 256, leaky ReLU, then BatchNorm over the batch before the
posterior heads. Decoder: z and c -> 128 each, concat -> 512 -> 1024 -> the (binned) volume,
linear output, as the paper's decoder but narrower.

Why the BatchNorm (docs/subtomograms.md): without normalisation every particle's code starts as
the same vector plus a small particle-specific part (leaky-ReLU features share a large positive
mean), so |cos| of any two codes is ~1, the gradient of the cosine vanishes there, and L_con(c)
sits at its plateau w * (1 + 0). Centring and scaling the features over the batch removes the
shared part, so the pair terms see the particles' differences from the first step.
"""

from __future__ import annotations

from torch import nn

from dcbench_plugins.dualcontrast.networks import Posterior, SplitInputDecoder

TRUNK_CHANNELS = (16, 32, 64)
FEATURES = 256


class SmallVolumeEncoder(nn.Module):
    def __init__(self, side: int, latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip((1, *TRUNK_CHANNELS), TRUNK_CHANNELS):
            layers += [nn.Conv3d(a, b, kernel_size=4, stride=2, padding=1), nn.LeakyReLU()]
        self.trunk = nn.Sequential(*layers)
        flat = TRUNK_CHANNELS[-1] * (side // 2 ** len(TRUNK_CHANNELS)) ** 3
        self.features = nn.Sequential(nn.Linear(flat, FEATURES), nn.LeakyReLU(), nn.BatchNorm1d(FEATURES))
        self.posterior = Posterior(FEATURES, latent_dim)

    def forward(self, x):
        return self.posterior(self.features(self.trunk(x).flatten(1)))


def small_volume_networks(shape: tuple[int, ...], latent_dim: int) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) for single-channel cubic volumes whose side is a multiple of 8."""
    side = shape[-1]
    encoder = SmallVolumeEncoder(side, latent_dim)
    decoder = SplitInputDecoder(latent_dim, 128, [512, 1024], tuple(shape), nn.LeakyReLU, sigmoid=False)
    return encoder, decoder


def small_volume_unsupported(shape: tuple[int, ...]) -> str | None:
    if len(shape) == 4 and shape[0] == 1 and shape[1] == shape[2] == shape[3] and shape[1] % 8 == 0:
        return None
    return (f"small volume networks need single-channel cubic volumes whose (binned) side is a multiple of 8, "
            f"not {'x'.join(map(str, shape))}")
