"""The paper's U-Net: parameter counts of the official models, shapes, zero-initialised output."""

import math

import pytest
import torch

from ddpm_bench.models import build_model
from ddpm_bench.models.unet import timestep_embedding

CIFAR10 = dict(name="unet", image_size=32, in_channels=3, ch=128, ch_mult=[1, 2, 2, 2], num_res_blocks=2,
               attn_resolutions=[16], dropout=0.1, out_channels=3)
LSUN256 = dict(CIFAR10, image_size=256, ch_mult=[1, 1, 2, 2, 4, 4], dropout=0.0)


def count_on_meta(config: dict) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(config).parameters())


def test_cifar10_unet_has_the_official_parameter_count():
    # official diffusion_tf CIFAR-10 model: 35,746,307 parameters (paper: 35.7M)
    assert count_on_meta(CIFAR10) == 35_746_307


def test_256_unet_has_about_114m_parameters():
    # paper / official run_lsun.py: "114M"
    assert abs(count_on_meta(LSUN256) - 114e6) < 0.5e6


def test_learned_variance_doubles_the_output_channels_only_in_the_last_conv():
    # conv_out gains 3 * (128 * 9) weights + 3 biases
    assert count_on_meta(dict(CIFAR10, out_channels=6)) - 35_746_307 == 3 * 128 * 9 + 3


def small_unet(**kw):
    torch.manual_seed(0)
    return build_model(dict(name="unet", image_size=8, in_channels=3, ch=32, ch_mult=[1, 2], num_res_blocks=1,
                            attn_resolutions=[4], dropout=0.0, out_channels=3) | kw)


def test_output_is_zero_at_initialisation_and_shapes_are_kept():
    net = small_unet(out_channels=6)
    out = net(torch.randn(2, 3, 8, 8), torch.tensor([0, 999]))
    assert out.shape == (2, 6, 8, 8)
    assert torch.count_nonzero(out) == 0  # conv_out is zero-initialised as in the official code


def test_output_depends_on_the_timestep_once_the_zero_initialised_layers_are_not_zero():
    net = small_unet()
    for p in net.parameters():  # the zero-initialised convs hide the timestep at initialisation
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 3, 8, 8)
    a, b = net(x, torch.tensor([3])), net(x, torch.tensor([700]))
    assert not torch.allclose(a, b)


def test_timestep_embedding_closed_form():
    emb = timestep_embedding(torch.tensor([0, 5]), 8)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = [math.exp(-math.log(10000.0) * k / 3) for k in range(4)]
    want = [math.sin(5 * f) for f in freqs] + [math.cos(5 * f) for f in freqs]
    assert torch.allclose(emb[1], torch.tensor(want), atol=1e-6)


def test_channels_not_divisible_by_32_are_refused():
    with pytest.raises(ValueError, match="GroupNorm"):
        small_unet(ch=16)
