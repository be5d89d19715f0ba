"""The faster 3D networks (channels-last convolutions, single-voxel convolutions as matmuls, one
output-layer matmul for the views and the generated pair) compute the same objective and
gradients as plain nn.Conv3d / nn.ConvTranspose3d / nn.Linear layers loaded from the same
state_dict."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dcbench_plugins.common.volume_layers import FlatConv3d, FlatConvTranspose3d
from dcbench_plugins.dualcontrast import networks, transforms
from dcbench_plugins.dualcontrast.method import DualContrast
from dcbench_plugins.harmony.method import Harmony

VOLUME = (1, 32, 32, 32)


def plain(module: nn.Module) -> nn.Module:
    """The same layer as a plain torch layer (NCDHW, no shortcuts); other modules unchanged."""
    if isinstance(module, nn.ConvTranspose3d):
        return nn.ConvTranspose3d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                  module.padding)
    if isinstance(module, nn.Conv3d):
        return nn.Conv3d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding)
    if isinstance(module, nn.LeakyReLU):
        return nn.LeakyReLU()
    return module


def plain_copy(model: nn.Module, sequences: list[str], decoder: nn.Module | None = None) -> nn.Module:
    """A deep copy of model with each named Sequential's layers made plain (and the decoder
    replaced if given), loaded with model's weights in PyTorch's default layout."""
    ref = copy.deepcopy(model)
    for name in sequences:
        owner, attr = name.rsplit(".", 1)
        seq = ref.get_submodule(owner)
        setattr(seq, attr, nn.Sequential(*[plain(m) for m in getattr(seq, attr)]))
    if decoder is not None:
        ref.decoder = decoder
    ref.load_state_dict({k: v.contiguous() for k, v in model.state_dict().items()})
    return ref


def assert_close_grads(ours: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rel: float = 1e-5) -> None:
    assert ours.keys() == expected.keys()
    for name, g in expected.items():
        scale = g.abs().max().item()
        assert (ours[name] - g).abs().max().item() <= rel * scale + 1e-9, name


def test_dualcontrast_volume_objective_and_gradients_equal_plain_layers() -> None:
    config = DualContrast.default_config("paper", VOLUME)
    config["precision"] = "fp32"
    method = DualContrast(config, VOLUME, "cpu", seed=0)
    assert isinstance(method.model.decoder, networks.VolumeDecoder)
    d = int(config["latent_dim"])
    ref = copy.copy(method)
    ref.model = plain_copy(method.model, ["encoder.trunk"], networks.SplitInputDecoder(
        d, 512, [1024, 1024, 1024, 5000], VOLUME, nn.LeakyReLU, sigmoid=False))
    assert not hasattr(ref.model.decoder, "decode_pair")  # the plain path: two decoder calls

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, *VOLUME, generator=gen)
    x_t = transforms.rotate(x, gen, per_sample=True)
    draws = method.draw(4)
    ours, theirs = method.training_losses(x, x_t, draws), ref.training_losses(x, x_t, draws)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].item() == pytest.approx(theirs[name].item(), rel=1e-5, abs=1e-7), name
    assert ours["con_z"].item() > 0

    def grads(model: nn.Module, total: torch.Tensor) -> dict[str, torch.Tensor]:
        names, params = zip(*model.named_parameters())
        return dict(zip(names, torch.autograd.grad(total, params)))

    assert_close_grads(grads(method.model, ours["total"]), grads(ref.model, theirs["total"]))


def test_volume_state_dicts_keep_their_keys_and_shapes() -> None:
    encoder, decoder = networks.build_networks(VOLUME, 50)
    plain_encoder = nn.Sequential(*[plain(m) for m in encoder.trunk])
    assert {k: v.shape for k, v in encoder.trunk.state_dict().items()} == \
        {k: v.shape for k, v in plain_encoder.state_dict().items()}
    assert "out.weight" in decoder.state_dict() and decoder.out.weight.shape == (32768, 5000)


def test_harmony_volume_networks_equal_plain_layers() -> None:
    method = Harmony(Harmony.default_config("paper", VOLUME), VOLUME, "cpu", seed=0)
    model = method.model
    ref = plain_copy(model, ["encoder.net", "decoder.net"])
    gen = torch.Generator().manual_seed(2)
    x, c = torch.randn(3, *VOLUME, generator=gen), torch.randn(3, model.latent_dim, generator=gen)
    loss = model.encoder(x).square().sum() + model.decoder(c).square().sum()
    ref_loss = ref.encoder(x).square().sum() + ref.decoder(c).square().sum()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    names, params = zip(*model.named_parameters())
    ours = dict(zip(names, torch.autograd.grad(loss, params)))
    theirs = dict(zip(names, torch.autograd.grad(ref_loss, [dict(ref.named_parameters())[n] for n in names])))
    assert_close_grads(ours, theirs)


@pytest.mark.parametrize("layer", [FlatConv3d(6, 5, 3), FlatConvTranspose3d(6, 5, 3)])
def test_flat_layers_fall_back_to_the_plain_layer_on_other_inputs(layer: nn.Module) -> None:
    x = torch.randn(2, 6, 4, 4, 4)
    parent = nn.Conv3d if isinstance(layer, nn.Conv3d) else nn.ConvTranspose3d
    assert torch.equal(layer(x), parent.forward(layer, x))
