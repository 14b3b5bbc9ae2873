"""The U-Net of DDPM (Ho et al. 2020, Appendix B), following the official `diffusion_tf/models/unet.py`.

A PixelCNN++-style U-Net: ResNet blocks (GroupNorm(32) + swish, 3x3 convolutions, dropout) into which a
projection of the sinusoidal timestep embedding is added, self-attention at the resolutions in
`attn_resolutions` (16x16 in the paper) and in the middle, strided-convolution downsampling,
nearest-neighbour + convolution upsampling, and a skip connection from every downward block to the
upward path. As in the official code, weights are Glorot-uniform ("fan_avg") with zero biases, and the
last convolution of each residual branch, of each attention block and of the output is initialised to
zero (the official code uses a variance scale of 1e-10).

Parameter names follow the official variable scopes (`down.{level}.block.{i}`, `mid.block_1`, ...).
The CIFAR-10 configuration (ch 128, ch_mult 1,2,2,2, 2 blocks, attention at 16) has 35,746,307
parameters, as the official model.

Three options go beyond the paper, each at the paper's choice by default: `norm_groups` (32; with ch 32
that is one channel per group, and such a GroupNorm removes each channel's mean, so the network cannot
see an image's colour: small models use fewer groups), and, for improved DDPM's CIFAR-10 models
(Nichol and Dhariwal 2021), `num_heads` (1) in every attention block and `scale_shift_norm` (off).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_bench.models.unet_config import ModelConfig

NORM_GROUPS = 32
NORM_EPS = 1e-6  # tf.contrib.layers.group_norm default


def timestep_embedding(i: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) network indices -> (N, dim) float32 sinusoidal embedding (official `get_timestep_embedding`,
    after the Transformer's positional encoding): [sin(i w_k), cos(i w_k)], w_k = 10000^(-k / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=i.device) * (-math.log(10000.0) / (half - 1)))
    args = i.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def _init(module: nn.Conv2d | nn.Linear, scale: float = 1.0) -> nn.Module:
    """Official `default_init`: Glorot-uniform scaled by `scale` (0 -> zeros), zero bias."""
    if scale == 0.0:
        nn.init.zeros_(module.weight)
    else:
        nn.init.xavier_uniform_(module.weight, gain=math.sqrt(scale))
    nn.init.zeros_(module.bias)
    return module


def conv3x3(cin: int, cout: int, scale: float = 1.0) -> nn.Conv2d:
    return _init(nn.Conv2d(cin, cout, 3, padding=1), scale)


def nin(cin: int, cout: int, scale: float = 1.0) -> nn.Conv2d:
    """A 1x1 convolution ("network in network", the official `nn.nin`)."""
    return _init(nn.Conv2d(cin, cout, 1), scale)


def group_norm(channels: int, groups: int = NORM_GROUPS) -> nn.GroupNorm:
    if channels % groups:
        raise ValueError(f"GroupNorm({groups}) needs channel counts divisible by {groups}, got {channels}")
    return nn.GroupNorm(groups, channels, eps=NORM_EPS)


class ResnetBlock(nn.Module):
    """x + conv2(dropout(swish(norm2(conv1(swish(norm1(x))) + dense(swish(temb)))))), with a 1x1
    shortcut when the channel count changes (official `resnet_block`, conv_shortcut=False). With
    `scale_shift` (improved DDPM's `use_scale_shift_norm`) the timestep instead scales and shifts the
    normalised features: norm2(h) * (1 + scale) + shift, [scale, shift] = dense(swish(temb))."""

    def __init__(self, cin: int, cout: int, temb_ch: int, dropout: float, groups: int = NORM_GROUPS,
                 scale_shift: bool = False):
        super().__init__()
        self.norm1 = group_norm(cin, groups)
        self.conv1 = conv3x3(cin, cout)
        self.temb_proj = _init(nn.Linear(temb_ch, 2 * cout if scale_shift else cout))
        self.norm2 = group_norm(cout, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(cout, cout, scale=0.0)
        self.nin_shortcut = nin(cin, cout) if cin != cout else None
        self.scale_shift = scale_shift

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        emb = self.temb_proj(F.silu(temb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = emb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + emb)
        h = self.conv2(self.dropout(F.silu(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Self-attention over all H*W positions (official `attn_block`, one head); with `heads` > 1 the
    channels are split into that many heads, each attending with its own weights (improved DDPM)."""

    def __init__(self, channels: int, groups: int = NORM_GROUPS, heads: int = 1):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{heads} attention heads need channel counts divisible by {heads}, got {channels}")
        self.heads = heads
        self.norm = group_norm(channels, groups)
        self.q = nin(channels, channels)
        self.k = nin(channels, channels)
        self.v = nin(channels, channels)
        self.proj_out = nin(channels, channels, scale=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        nh, ch = n * self.heads, c // self.heads
        h = self.norm(x)
        q = self.q(h).reshape(nh, ch, hh * ww).transpose(1, 2)  # (N heads, HW, C / heads)
        k = self.k(h).reshape(nh, ch, hh * ww)  # (N heads, C / heads, HW)
        v = self.v(h).reshape(nh, ch, hh * ww).transpose(1, 2)  # (N heads, HW, C / heads)
        w = torch.softmax(torch.bmm(q, k) * (ch ** -0.5), dim=-1)  # (N heads, HW, HW)
        h = torch.bmm(w, v).transpose(1, 2).reshape(n, c, hh, ww)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """3x3 convolution with stride 2 and TensorFlow "SAME" padding (bottom/right only)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _init(nn.Conv2d(channels, channels, 3, stride=2, padding=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The blocks of one resolution: residual blocks, their attention blocks, and the resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


def build_unet(**arguments) -> UNet:
    """The U-Net of a recipe's or checkpoint's `model` table, its arguments checked first (`ModelConfig`: a
    checkpoint's stored config reaches here without the recipe's checks; ValueError naming model.FIELD)."""
    ModelConfig(name="unet", **{**arguments, "out_channels": arguments.get("out_channels") or 0})
    return UNet(**arguments)


class UNet(nn.Module):
    """eps_theta(x_t, i): float32 (N, in_channels, H, W) and int64 (N,) -> (N, out_channels, H, W)."""

    def __init__(self, image_size: int = 32, in_channels: int = 3, ch: int = 128,
                 ch_mult: list[int] | tuple[int, ...] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: list[int] | tuple[int, ...] = (16,), dropout: float = 0.1,
                 out_channels: int | None = None, norm_groups: int = NORM_GROUPS, num_heads: int = 1,
                 scale_shift_norm: bool = False):
        super().__init__()
        ch_mult = tuple(int(m) for m in ch_mult)
        attn_resolutions = {int(r) for r in attn_resolutions}
        if image_size % (2 ** (len(ch_mult) - 1)):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{len(ch_mult) - 1} (ch_mult {ch_mult})")
        resolutions = [image_size // 2**k for k in range(len(ch_mult))]
        if attn_resolutions - set(resolutions):  # attention there would silently never be built
            raise ValueError(f"attn_resolutions {sorted(attn_resolutions)}: the model's resolutions are {resolutions} "
                             f"(image_size {image_size}, ch_mult {list(ch_mult)}); "
                             f"{sorted(attn_resolutions - set(resolutions))} matches none")
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.ch = ch
        temb_ch = ch * 4
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([_init(nn.Linear(ch, temb_ch)), _init(nn.Linear(temb_ch, temb_ch))])

        def block(cin: int, cout: int) -> ResnetBlock:
            return ResnetBlock(cin, cout, temb_ch, dropout, norm_groups, scale_shift_norm)

        def attention(channels: int) -> AttnBlock:
            return AttnBlock(channels, norm_groups, num_heads)

        self.conv_in = conv3x3(in_channels, ch)
        skip_ch = [ch]  # channels of every tensor pushed on the skip stack (official `hs`)
        cur, res = ch, image_size
        self.down = nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            lv = Level()
            for _ in range(num_res_blocks):
                lv.block.append(block(cur, ch * mult))
                cur = ch * mult
                lv.attn.append(attention(cur) if res in attn_resolutions else nn.Identity())
                skip_ch.append(cur)
            if level != len(ch_mult) - 1:
                lv.downsample = Downsample(cur)
                res //= 2
                skip_ch.append(cur)
            self.down.append(lv)

        self.mid = nn.Module()
        self.mid.block_1 = block(cur, cur)
        self.mid.attn_1 = attention(cur)
        self.mid.block_2 = block(cur, cur)

        up = []
        for level in reversed(range(len(ch_mult))):
            lv = Level()
            for _ in range(num_res_blocks + 1):
                lv.block.append(block(cur + skip_ch.pop(), ch * ch_mult[level]))
                cur = ch * ch_mult[level]
                lv.attn.append(attention(cur) if res in attn_resolutions else nn.Identity())
            if level != 0:
                lv.upsample = Upsample(cur)
                res *= 2
            up.insert(0, lv)  # indexed by level, as the official scopes
        self.up = nn.ModuleList(up)
        assert not skip_ch

        self.norm_out = group_norm(cur, norm_groups)
        self.conv_out = conv3x3(cur, self.out_channels, scale=0.0)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = timestep_embedding(t, self.ch)
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](temb)))

        hs = [self.conv_in(x)]
        for lv in self.down:
            for block, attn in zip(lv.block, lv.attn, strict=True):
                hs.append(attn(block(hs[-1], temb)))
            if hasattr(lv, "downsample"):
                hs.append(lv.downsample(hs[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)

        for lv in reversed(self.up):
            for block, attn in zip(lv.block, lv.attn, strict=True):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), temb))
            if hasattr(lv, "upsample"):
                h = lv.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
