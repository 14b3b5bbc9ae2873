"""Model plug-ins for the scale tests (`--model tests/scale_plugins.py:NAME`)."""

from __future__ import annotations

import os
import time

import torch

from tests.plugins import TinyConv


class SlowTinyConv(TinyConv):
    """TinyConv (same weights, same outputs) that sleeps in every call, so a run can be killed mid-way."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time.sleep(0.25)
        return super().forward(x, t)


def slow_tiny_conv_T20():
    return SlowTinyConv(T=20)


def nan_on_rank_1_T20():
    """TinyConv, except that the process of torchrun rank 1 returns NaN: a failure on one rank only."""
    net = TinyConv(T=20)
    if os.environ.get("RANK") != "1":
        return net
    return lambda x, t: torch.full_like(net(x, t), float("nan"))
