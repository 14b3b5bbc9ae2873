"""The paper's U-Net: parameter counts of the official models, shapes, zero-initialised output."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ddpm_bench.models.registry import build_model
from ddpm_bench.models.unet import AttnBlock, ResnetBlock, timestep_embedding

ROOT = Path(__file__).parents[1]

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


def test_norm_groups_and_heads_are_checked_against_the_channels():
    assert isinstance(small_unet(ch=16, norm_groups=8), torch.nn.Module)
    with pytest.raises(ValueError, match="norm_groups 8"):
        small_unet(ch=20, norm_groups=8)
    with pytest.raises(ValueError, match="num_heads 3"):
        small_unet(num_heads=3)


def reference_attention(block: AttnBlock, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Self-attention written out head by head: head k attends with channels [k C/heads, (k+1) C/heads)."""
    n, c, hh, ww = x.shape
    h = block.norm(x)
    q, k, v = (layer(h).reshape(n, c, hh * ww) for layer in (block.q, block.k, block.v))
    d = c // heads
    out = []
    for head in range(heads):
        part = slice(head * d, (head + 1) * d)
        w = torch.softmax(torch.einsum("ncp,ncs->nps", q[:, part], k[:, part]) / math.sqrt(d), dim=-1)
        out.append(torch.einsum("nps,ncs->ncp", w, v[:, part]))
    return x + block.proj_out(torch.cat(out, dim=1).reshape(n, c, hh, ww))


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_heads_attend_each_with_their_own_channels(heads):
    torch.manual_seed(0)
    block = AttnBlock(32, 8, heads)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(block(x), reference_attention(block, x, heads), rtol=1e-5, atol=1e-5)
    if heads > 1:  # not the one-head attention
        assert not torch.allclose(block(x), reference_attention(block, x, 1), atol=1e-3)


def test_scale_shift_norm_scales_and_shifts_the_normalised_features():
    torch.manual_seed(0)
    block = ResnetBlock(32, 32, temb_ch=16, dropout=0.0, groups=8, scale_shift=True)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x, temb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    scale, shift = block.temb_proj(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
    h = block.norm2(block.conv1(F.silu(block.norm1(x)))) * (1 + scale) + shift
    torch.testing.assert_close(block(x, temb), x + block.conv2(F.silu(h)), rtol=1e-5, atol=1e-5)
    assert block.temb_proj.out_features == 64  # a scale and a shift per channel


def test_the_improved_ddpm_recipes_build_their_cifar10_model():
    from ddpm_bench.config import load_recipe

    for name in ("hybrid", "vlb"):
        cfg = load_recipe(ROOT / "recipes" / f"iddpm_cifar10_{name}.toml", [])
        assert cfg.diffusion.T == 4000 and cfg.model.num_heads == 4 and cfg.model.out_channels == 6
        assert count_on_meta(cfg.to_dict()["model"]) == 52_546_438
