"""The U-Net of improved DDPM (Nichol & Dhariwal 2021), as openai/improved-diffusion's `UNetModel` builds it.

Parameter names and shapes are those of its state dict (`time_embed.0.weight`,
`input_blocks.3.0.skip_connection.weight`, `middle_block.1.qkv.weight`, `out.2.bias`, ...), so its checkpoints
load with `strict=True`, and the function is the same, layer by layer, in float32:

- the timestep embedding is [cos(t w_k), sin(t w_k)] with w_k = 10000^(-k / half), k = 0..half-1 (cosine
  first, and `half` in the exponent where DDPM's embedding has `half - 1`), of the timestep the network is
  given (improved-diffusion passes t * 1000 / T with `rescale_timesteps`: see `iddpm_flags.timestep_input`);
- a two-layer SiLU MLP to 4 * model_channels, plus a label embedding for class-conditional models;
- residual blocks GroupNorm -> SiLU -> conv, the timestep projection added (or, with `use_scale_shift_norm`,
  applied as norm(h) * (1 + scale) + shift after the second GroupNorm), SiLU -> dropout -> conv, and a 1x1
  convolution on the skip path when the channel count changes;
- GroupNorm with 32 groups and eps 1e-5, computed in float32 whatever the activations' precision;
- multi-head self-attention over the H*W positions: one 1x1 `qkv` convolution whose 3C output channels are cut
  into `num_heads` consecutive groups, each holding that head's q, k and v; q and k are each scaled by
  (C / heads)^(-1/4) before their product, and the softmax runs in float32;
- downsampling by a 3x3 stride-2 convolution padded by one pixel on every side (average pooling when
  `conv_resample` is off), upsampling by nearest-neighbour x2 then a 3x3 convolution;
- attention at the downsample rates in `attention_resolutions` (improved-diffusion's flags give image sizes;
  `iddpm_flags` converts them) and always in the middle, Res -> Attention -> Res;
- every input block's output goes onto the skip stack, and each output block starts with a residual block on
  [h, skip] concatenated along the channels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

NORM_GROUPS = 32
MAX_PERIOD = 10000.0


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) timesteps, integer or fractional -> (N, dim) float32 [cos(t w), sin(t w)],
    w_k = 10000^(-k / (dim // 2)); an odd `dim` gets one zero column at the end (improved-diffusion's
    `timestep_embedding`)."""
    half = dim // 2
    ramp = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(MAX_PERIOD) * ramp / half)
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, channels), eps 1e-5, computed in float32 and returned in the input's dtype."""

    def __init__(self, channels: int):
        if channels % NORM_GROUPS:
            raise ValueError(f"GroupNorm({NORM_GROUPS}) needs channel counts divisible by {NORM_GROUPS}, "
                             f"got {channels}")
        super().__init__(NORM_GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class EmbeddingStep(nn.Sequential):
    """A sequence of layers; those that take the timestep embedding (`ResBlock`) are given it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ResBlock(nn.Module):
    """skip(x) + out_layers(in_layers(x) + proj(emb)), or with `scale_shift`
    skip(x) + out_layers[1:](norm(in_layers(x)) * (1 + scale) + shift), [scale, shift] = proj(emb)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 scale_shift: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(),
                                        nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """x + proj_out(attention(qkv(norm(x)))) over the flattened positions, with `num_heads` heads.

    Head j reads channels [3 c j, 3 c (j + 1)) of the `qkv` output, c = channels / heads, as its q, k and v in
    that order (improved-diffusion's layout, not q, k and v each split into heads).
    """

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"{num_heads} attention heads need a channel count divisible by {num_heads}, "
                             f"got {channels}")
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *spatial = x.shape
        flat = x.reshape(n, c, -1)  # (N, C, L)
        qkv = self.qkv(self.norm(flat)).reshape(n * self.num_heads, 3 * c // self.num_heads, -1)
        q, k, v = qkv.chunk(3, dim=1)  # each (N heads, C / heads, L)
        scale = (c // self.num_heads) ** -0.25  # on q and on k: 1 / sqrt(C / heads) on their product
        logits = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weights = torch.softmax(logits.float(), dim=-1).to(logits.dtype)  # (N heads, L queries, L keys)
        h = torch.einsum("bts,bcs->bct", weights, v).reshape(n, c, -1)
        return (flat + self.proj_out(h)).reshape(n, c, *spatial)


class Downsample(nn.Module):
    """Halve H and W: a 3x3 stride-2 convolution with one pixel of zero padding on every side, or 2x2 average
    pooling without `use_conv`."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, then a 3x3 convolution with `use_conv`."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class IddpmUNet(nn.Module):
    """improved-diffusion's `UNetModel`: float32 (N, in_channels, H, W) and (N,) timesteps as the network is
    given them (integer or fractional, already rescaled where the flags say so) -> (N, out_channels, H, W);
    with `learn_sigma` the output is the eps (or x_0) prediction followed by the variance interpolation value.

    `attention_resolutions` are downsample rates (1 at full size, 2 after one downsampling, ...);
    `num_heads_upsample` -1 means `num_heads`; `num_classes` None for an unconditional model.
    """

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, num_res_blocks: int,
                 attention_resolutions: Iterable[int], dropout: float = 0.0,
                 channel_mult: tuple[int, ...] = (1, 2, 4, 8), conv_resample: bool = True,
                 num_classes: int | None = None, num_heads: int = 1, num_heads_upsample: int = -1,
                 use_scale_shift_norm: bool = False):
        super().__init__()
        heads_up = num_heads if num_heads_upsample == -1 else num_heads_upsample
        rates = {int(r) for r in attention_resolutions}
        channel_mult = tuple(int(m) for m in channel_mult)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.model_channels = model_channels
        self.num_classes = num_classes
        emb_ch = 4 * model_channels

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(),
                                        nn.Linear(emb_ch, emb_ch))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_ch)

        def res(cin: int, cout: int | None = None) -> ResBlock:
            return ResBlock(cin, emb_ch, dropout, cout, use_scale_shift_norm)

        stem = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.input_blocks = nn.ModuleList([EmbeddingStep(stem)])
        skip_ch = [model_channels]  # channels of every tensor on the skip stack
        ch, rate = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if rate in rates:
                    layers.append(AttentionBlock(ch, num_heads))
                self.input_blocks.append(EmbeddingStep(*layers))
                skip_ch.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(EmbeddingStep(Downsample(ch, conv_resample)))
                skip_ch.append(ch)
                rate *= 2

        self.middle_block = EmbeddingStep(res(ch), AttentionBlock(ch, num_heads), res(ch))

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            for j in range(num_res_blocks + 1):
                layers = [res(ch + skip_ch.pop(), model_channels * channel_mult[level])]
                ch = model_channels * channel_mult[level]
                if rate in rates:
                    layers.append(AttentionBlock(ch, heads_up))
                if level != 0 and j == num_res_blocks:
                    layers.append(Upsample(ch, conv_resample))
                    rate //= 2
                self.output_blocks.append(EmbeddingStep(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        if (y is None) != (self.num_classes is None):
            raise ValueError("class labels y are needed by a class-conditional model, and only by one")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        h = x.float()
        skips = []
        for step in self.input_blocks:
            h = step(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for step in self.output_blocks:
            h = step(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))
