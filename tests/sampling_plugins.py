"""Small `--model` plug-ins for the sampler tests: a seeded tiny conv net and a model that returns NaN."""

from __future__ import annotations

import torch


class TinyConv(torch.nn.Module):
    """A two-layer conv net with a learned timestep embedding (deterministic weights from a fixed seed)."""

    def __init__(self, channels: int = 3, out_channels: int | None = None, T: int = 1000, width: int = 16):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, width, 3, padding=1)
        self.emb = torch.nn.Embedding(T, width)
        self.conv2 = torch.nn.Conv2d(width, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.silu(self.conv1(x) + self.emb(t)[:, :, None, None])
        return self.conv2(h)


def tiny_conv() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyConv()


def tiny_conv_gray() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyConv(channels=1)


def nan_if_bright(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps = 0, except NaN at network index 9 (the first step when T = 10) for the samples whose x_T has
    its first pixel above 1."""
    out = torch.zeros_like(x)
    bad = (x[:, 0, 0, 0] > 1.0) & (t == 9)
    out[bad] = float("nan")
    return out


def nan_model():
    return nan_if_bright
