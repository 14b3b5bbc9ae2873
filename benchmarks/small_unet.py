"""A small DDPM-style U-Net for the benchmarks only (the paper's architecture, scaled down): sinusoidal
time embedding, residual blocks with GroupNorm and SiLU, self-attention at 16x16, seeded weights."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x))) + self.temb(nn.functional.silu(emb))[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.norm, self.qkv, self.proj = nn.GroupNorm(8, ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).unbind(1)
        a = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(a.transpose(1, 2).reshape(n, c, h, w))


class SmallUNet(nn.Module):
    """ch=32, channel multipliers (1, 2, 2), one residual block per level, attention at 16x16."""

    def __init__(self, ch: int = 32, in_ch: int = 3, seed: int = 0):
        super().__init__()
        temb = 4 * ch
        self.ch = ch
        self.emb = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.inp = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.down1, self.down2 = ResBlock(ch, ch, temb), ResBlock(ch, 2 * ch, temb)
        self.attn2 = Attention(2 * ch)
        self.mid1, self.mid_attn, self.mid2 = ResBlock(2 * ch, 2 * ch, temb), Attention(2 * ch), ResBlock(2 * ch, 2 * ch, temb)
        self.up2 = ResBlock(4 * ch, 2 * ch, temb)
        self.up1 = ResBlock(3 * ch, ch, temb)
        self.out = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, in_ch, 3, padding=1))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # every parameter from the seeded generator: two instances are identical
            for name, q in self.named_parameters():
                z = torch.randn(q.shape, generator=g)
                if q.ndim > 1:
                    q.copy_(z * 0.5 / math.sqrt(q[0].numel()))
                else:
                    q.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + 0.05 * z)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.emb(timestep_embedding(t, self.ch))
        h0 = self.down1(self.inp(x), emb)  # 32x32, ch
        h1 = self.attn2(self.down2(nn.functional.avg_pool2d(h0, 2), emb))  # 16x16, 2ch
        m = nn.functional.avg_pool2d(h1, 2)  # 8x8
        m = self.mid2(self.mid_attn(self.mid1(m, emb)), emb)
        u = self.up2(torch.cat([nn.functional.interpolate(m, scale_factor=2.0), h1], 1), emb)
        u = self.up1(torch.cat([nn.functional.interpolate(u, scale_factor=2.0), h0], 1), emb)
        return self.out(u)


def small_unet():
    """`--model benchmarks/small_unet.py:small_unet`"""
    return SmallUNet().eval()
