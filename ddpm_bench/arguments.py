"""How a message names what its caller gave: `--num-images 5` on the command line, `num_images=5` from
Python. The command line says once that it is the caller (`on_command_line`); every message below words its
arguments with `named`, `given` and `say`, so a Python caller reads its own keywords and the command line
keeps its flags. It also holds the one check of the API's arguments (`count`, `flag`, `indices`,
`feature_matrix`): what the command line's flag types refuse, the API refuses too, by the argument's name.
A leaf: it imports nothing of ddpm_bench but its errors."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np

from ddpm_bench.errors import UserError

_COMMAND_LINE = contextvars.ContextVar("ddpm_bench_command_line", default=False)

# Python keywords whose command-line spelling is not `--name-with-dashes`
CLI_NAMES = {
    "source": "--ckpt", "plugin": "--model", "images": "--data", "num": "--num", "train": "TRAIN_DIR",
    "test": "TEST_DIR", "nll_dir": "NLL_DIR", "run_dirs": "RUN_DIR", "samples": "--samples",
}


# Python forms of arguments a caller gives by position, not by keyword
PYTHON_FORMS = {"source": "load_model({value!r})", "images": "images {value!r}"}


def command_line() -> bool:
    """Whether the caller is the `ddpm-bench` command line."""
    return _COMMAND_LINE.get()


@contextlib.contextmanager
def on_command_line() -> Iterator[None]:
    """Messages inside name flags (`ddpm_bench.cli` runs every command in it)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def named(name: str) -> str:
    """The argument whose Python keyword is `name`, as the caller writes it: `--num-images` / `num_images=`."""
    if _COMMAND_LINE.get():
        return CLI_NAMES.get(name, "--" + name.replace("_", "-"))
    return f"{name}="


def given(name: str, value: object) -> str:
    """The argument with its value as the caller wrote it: `--num-images 5` / `num_images=5`."""
    if _COMMAND_LINE.get():
        return f"{named(name)} {value}"
    value = str(value) if hasattr(value, "__fspath__") else value
    return PYTHON_FORMS.get(name, "{name}={value!r}").format(name=name, value=value)


def switch(name: str) -> str:
    """An on/off argument turned on, as the caller writes it: `--force` / `force=True`."""
    return named(name) if _COMMAND_LINE.get() else f"{name}=True"


def say(cli: str, python: str) -> str:
    """One of two wordings of advice: for the command line, or for a Python caller."""
    return cli if _COMMAND_LINE.get() else python


# -- the one argument check of the API (the command line's argparse types check the same on its side) --------

MAX_INDEX = 2**62  # a data-set index beyond this cannot be meant (and would overflow the noise keys)


def count(name: str, value: object, *, low: int = 1, high: int | None = None, optional: bool = False) -> int | None:
    """`value` as a whole number in low..high (None passes when `optional`): a bool, a float (2.5, and 2.0
    too: it was computed, not counted), a string or anything else is refused naming the argument."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{given(name, value)}: must be a whole number (int), got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        span = f"{low}..{high:,}" if high is not None else f"at least {low}"
        raise UserError(f"{given(name, value)}: must be {span}")
    return value


def flag(name: str, value: object) -> bool:
    """`value` as a bool (True/False only: 'no' or 0 is not taken for one)."""
    if not isinstance(value, (bool, np.bool_)):
        raise UserError(f"{given(name, value)}: must be True or False, got {type(value).__name__}")
    return bool(value)


def indices(name: str, values: object, n: int) -> np.ndarray:
    """`values` as n distinct data-set indices (int64, 0..MAX_INDEX): fractional, negative, repeated or too
    large ones are refused, never rounded or wrapped."""
    try:
        items = np.asarray(values, dtype=object)
    except (TypeError, ValueError) as e:
        raise UserError(f"{named(name)}: not an array of indices ({e})") from None
    if items.shape != (n,):
        raise UserError(f"{named(name)}: expected {n} data-set indices (one per image), got shape {items.shape}")
    out = []
    for v in items.tolist():
        v = v.item() if isinstance(v, np.generic) else v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
            raise UserError(f"{named(name)}: data-set indices must be whole numbers, got {v!r}")
        if not 0 <= v <= MAX_INDEX:
            raise UserError(f"{named(name)}: data-set indices must lie in 0..2**62, got {v!r}")
        out.append(int(v))
    if len(set(out)) != len(out):
        raise UserError(f"{named(name)}: data-set indices must be distinct (each keys one image's noise)")
    return np.asarray(out, dtype=np.int64)


def feature_matrix(name: str, value: object) -> np.ndarray:
    """`value` as a finite float64 (N, D) feature matrix with N >= 2 (a covariance needs two rows)."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise UserError(f"{named(name)}: not a numeric array ({e})") from None
    if a.ndim != 2 or a.shape[1] < 1:
        raise UserError(f"{named(name)}: expected features (N, D), one row per image, got shape {a.shape}")
    if a.shape[0] < 2:
        raise UserError(f"{named(name)}: {a.shape[0]} row(s); a Frechet distance compares the mean and covariance "
                        "of two feature sets, which needs at least 2 rows on each side (the paper: 50,000)")
    if not np.all(np.isfinite(a)):
        raise UserError(f"{named(name)}: holds NaN or inf")
    return a
