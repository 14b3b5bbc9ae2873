"""A small convolutional denoiser for the benchmarks only: three 3x3 convolutions with 64 channels and
ReLU between them, seeded weights, no time input (an eps prediction that ignores t). Its network is cheap,
so a benchmark on it shows what the bound engine costs beside the network."""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    def __init__(self, channels: int = 3, width: int = 64):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def conv_net() -> ConvNet:
    """The plug-in (`--model benchmarks/conv_net.py:conv_net`): seeded weights."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    net = ConvNet()
    torch.random.set_rng_state(gen_state)
    return net
