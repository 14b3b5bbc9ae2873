"""A `--model MODULE:CALLABLE` plug-in is the user's code: what goes wrong inside it is reported as its error.

- an exception raised by its factory or its forward f(x, t) becomes a `PluginError` (exit status 1) with
  one line naming the plug-in, the exception and the frame that raised it:
  `error in plug-in MODULE:CALLABLE: ValueError: message (at file.py:12 in forward)`;
  running out of memory is not the plug-in's fault and passes through (ddpm_bench.failures names the
  batch size to lower);
- f(x, t) returning anything but a tensor (a tuple, an ndarray, None) is a `ModelOutputError` (exit 2)
  naming the plug-in and what it returned.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

import torch

from ddpm_bench.errors import ModelOutputError, PluginError
from ddpm_bench.failures import is_out_of_memory


def plugin_error(spec: str, exc: BaseException) -> PluginError:
    """The one-line error of `exc`, raised inside the plug-in `spec`, naming the last frame of its traceback."""
    text = str(exc).strip()
    message = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return PluginError(f"error in plug-in {spec}: {message}{where}")


def call_factory(spec: str, factory: Callable):
    """CALLABLE(), with an exception it raises reported as the plug-in's error."""
    try:
        return factory()
    except Exception as e:
        if is_out_of_memory(e):
            raise
        raise plugin_error(spec, e) from e


def describe(value) -> str:
    """What a forward returned, for the error message: `a tuple of 2`, `a numpy.ndarray of shape (2, 3)`."""
    if value is None:
        return "None"
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}.{kind.__qualname__}"
    if isinstance(value, (tuple, list, dict)):
        return f"a {name} of {len(value)}"
    shape = getattr(value, "shape", None)
    return f"a {name} of shape {tuple(shape)}" if shape is not None else f"a {name}"


def guard_forward(spec: str, net: Callable) -> Callable:
    """`net` as f(x, t) that reports the plug-in's exceptions and non-tensor outputs (see the module docstring)."""

    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        try:
            out = net(x, t)
        except Exception as e:
            if is_out_of_memory(e):
                raise
            raise plugin_error(spec, e) from e
        if not isinstance(out, torch.Tensor):
            raise ModelOutputError(f"--model {spec}: f(x, t) returned {describe(out)}; expected a torch.Tensor "
                                   f"of shape (N, C, H, W) (or (N, 2C, H, W) for a learned variance)")
        return out

    return forward


def guard_source(spec: str, source):
    """The `ModelSource` of the plug-in `spec` with its net guarded by `guard_forward` (its module, kept for
    identity, channels-last and the parameter count, stays the plug-in's own). Returns `source`."""
    source.net = guard_forward(spec, source.net)
    return source
