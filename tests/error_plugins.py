"""`--model` plug-ins that misbehave, for the one-line error tests (tests/test_errors.py)."""

from __future__ import annotations

import numpy as np
import torch


def returns_tuple():
    return lambda x, t: (x, x)


def returns_ndarray():
    return lambda x, t: np.zeros(tuple(x.shape), np.float32)


def returns_none():
    return lambda x, t: None


def _load_weights(path: str):
    raise FileNotFoundError(f"no weights at {path}")


def factory_raises():
    return _load_weights("/nowhere/weights.pt")


class Raising(torch.nn.Module):
    """Raises in its forward, two frames deep in this file."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.decode(x)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("decoder expects 16 channels\nsecond line of the message")


def forward_raises():
    return Raising()


def cuda_out_of_memory():
    def net(x, t):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    return net


def memory_error():
    def net(x, t):
        raise MemoryError()

    return net


def zeros():
    """eps = 0: the cheapest valid model."""
    return lambda x, t: torch.zeros_like(x)
