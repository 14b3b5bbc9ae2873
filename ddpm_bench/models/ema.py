"""Exponential moving average of the parameters (DDPM Appendix B: decay 0.9999, as the official
`tf.train.ExponentialMovingAverage` without a warm-up of the decay).

theta_ema <- decay * theta_ema + (1 - decay) * theta after every optimiser step; buffers are copied.
Its state dict is that of a plain copy of the network, so `ckpt["ema"]` loads into the model directly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards the parameters of `model` (the unwrapped network, not a DDP wrapper)."""
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
