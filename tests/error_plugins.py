"""`--model` plug-ins that misbehave, for the one-line error tests (tests/test_errors.py). Each returns a
torch.nn.Module (a module is identified by its weights, with no warning about plain functions)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


class Forward(torch.nn.Module):
    """A module whose forward is `fn(x, t)` (one parameter, so that it has weights)."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn
        self.scale = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, t: torch.Tensor):
        return self.fn(x, t)


def returns_tuple():
    return Forward(lambda x, t: (x, x))


def returns_ndarray():
    return Forward(lambda x, t: np.zeros(tuple(x.shape), np.float32))


def returns_none():
    return Forward(lambda x, t: None)


def _load_weights(path: str):
    raise FileNotFoundError(f"no weights at {path}")


def factory_raises():
    return _load_weights("/nowhere/weights.pt")


class Raising(torch.nn.Module):
    """Raises in its forward, two frames deep in this file."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.decode(x)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("decoder expects 16 channels\nsecond line of the message")


def forward_raises():
    return Raising()


def _cuda_out_of_memory(x, t):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def _memory_error(x, t):
    raise MemoryError()


def cuda_out_of_memory():
    return Forward(_cuda_out_of_memory)


def memory_error():
    return Forward(_memory_error)


def zeros():
    """eps = 0: the cheapest valid model."""
    return Forward(lambda x, t: torch.zeros_like(x))


def _exit(*args):
    raise SystemExit(0)


def exits_in_factory():
    """A factory that ends the process as a success."""
    raise SystemExit(0)


def exits_in_forward():
    return Forward(_exit)


def output_on_meta():
    """f(x, t) that returns its output on another device than its input's."""
    return Forward(lambda x, t: torch.zeros(x.shape, device="meta"))


class NeedsArgument(torch.nn.Module):
    """A plug-in class whose constructor needs an argument that ddpm-bench does not give."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
