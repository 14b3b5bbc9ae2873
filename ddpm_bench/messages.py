"""What library code tells its caller besides its results, never by printing: warnings through Python's
`warnings` (`warn`, category `DdpmBenchWarning`) and notes on progress through the `ddpm_bench` logger
(`note`, level INFO). A notebook sees the warnings and, if it asks for them, the notes
(`logging.getLogger("ddpm_bench").setLevel("INFO")`); the command line shows both on stderr as
`ddpm-bench CMD: warning: ...` and `ddpm-bench CMD: ...` (`to_stderr`). A leaf module."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

logger = logging.getLogger("ddpm_bench")


class DdpmBenchWarning(UserWarning):
    """A result was computed, but something about it or its inputs deserves the caller's attention."""


def warn(message: str) -> None:
    """A warning to the caller (shown each time on the command line, once per place in a notebook)."""
    warnings.warn(message, DdpmBenchWarning, stacklevel=2)


def note(message: str) -> None:
    """A note on progress (a stage done, a run already complete): the logger at INFO."""
    logger.info(message)


@contextlib.contextmanager
def to_stderr(command: str) -> Iterator[None]:
    """Inside: every warning of ddpm-bench is one line `ddpm-bench COMMAND: warning: ...` on stderr, every
    note `ddpm-bench COMMAND: ...`; other libraries' warnings keep their own form."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"ddpm-bench {command}: %(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    with warnings.catch_warnings():
        warnings.simplefilter("always", DdpmBenchWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, DdpmBenchWarning):
                print(f"ddpm-bench {command}: warning: {message}", file=sys.stderr, flush=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = shown
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
