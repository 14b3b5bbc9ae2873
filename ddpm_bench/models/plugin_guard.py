"""A `--model MODULE:CALLABLE` plug-in is the user's code: what goes wrong inside it is reported as its error.

- anything raised by its factory or its forward f(x, t) but KeyboardInterrupt (SystemExit included: a
  plug-in cannot end the command as a success) becomes a `PluginError` (exit status 1) with one line
  naming the plug-in, the exception and the frame of the user's code that raised it:
  `error in plug-in MODULE:CALLABLE: ValueError: message (at file.py:12 in forward)`;
  running out of memory is not the plug-in's fault and passes through (ddpm_bench.failures names the
  batch size to lower);
- f(x, t) returning anything but a tensor is named by `ddpm_bench.network.Network` with `describe_value`.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from pathlib import Path

from ddpm_bench.errors import PluginError
from ddpm_bench.failures import is_out_of_memory

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def plugin_error(spec: str, exc: BaseException, fn: Callable | None = None) -> PluginError:
    """The one-line error of `exc`, raised inside the plug-in `spec`, naming the last frame of its traceback
    in the user's code (outside ddpm-bench and installed libraries); when there is none (a call that failed
    before entering it, such as a constructor missing an argument), the definition of `fn`."""
    text = str(exc).strip()
    message = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
    own = [f for f in traceback.extract_tb(exc.__traceback__) if not _inside_library(f.filename)]
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__init__", None), "__code__", None)
    if own:
        where = f" (at {own[-1].filename}:{own[-1].lineno} in {own[-1].name})"
    elif code is not None:
        where = f" (calling {getattr(fn, '__qualname__', spec)} defined at {code.co_filename}:{code.co_firstlineno})"
    else:
        where = ""
    return PluginError(f"error in plug-in {spec}: {message}{where}")


def _inside_library(filename: str) -> bool:
    """Whether a traceback frame is ddpm-bench's own code, or torch's / Python's rather than the user's."""
    path = Path(filename)
    return path.is_relative_to(PACKAGE_DIR) or "site-packages" in path.parts or filename.startswith("<")


def guarded_call(spec: str, fn: Callable, *args):
    """fn(*args), the plug-in `spec`'s code (its factory, or its forward f(x, t)), with anything it raises but
    KeyboardInterrupt and running out of memory reported as the plug-in's error; an error of the factory
    (called without arguments) with no frame in the user's code names where the factory is defined."""
    try:
        return fn(*args)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - SystemExit too: the plug-in cannot end the command
        if is_out_of_memory(e):  # not the plug-in's fault: ddpm_bench.failures names the batch size
            raise
        raise plugin_error(spec, e, None if args else fn) from e


def describe_value(value) -> str:
    """What a forward returned, for the error message: `a tuple of 2`, `a numpy.ndarray of shape (2, 3)`."""
    if value is None:
        return "None"
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__.split('.')[0]}.{kind.__qualname__}"
    if isinstance(value, (tuple, list, dict)):
        return f"a {name} of {len(value)}"
    shape = getattr(value, "shape", None)
    return f"a {name} of shape {tuple(shape)}" if shape is not None else f"a {name}"
