"""A training run's CSV logs (log.csv, eval.csv): one row per step, trimmed on resume to the checkpoint's
step (the rows written after it are written again)."""

from __future__ import annotations

import sys
from pathlib import Path

from ddpm_bench.errors import UserError
from ddpm_bench.shards import atomic_write_text


def trim_step_log(path: Path, header: str, step: int) -> None:
    """Keep the rows of `path` up to `step` (a missing file: the header alone); a row cut off or not of
    this log (a wrong field count, a step that is no integer >= 0, a value that is no number) is dropped,
    with a warning."""
    try:
        rows = path.read_text(errors="replace").splitlines()[1:] if path.exists() else []
    except OSError as e:
        raise UserError(f"{path}: unreadable training log ({e.strerror}); move it away to start a new one") from None
    width = len(header.split(","))
    steps = [(r, row_step(r, width)) for r in rows if r.strip()]
    keep = [r for r, s in steps if s is not None and s <= step]
    if any(s is None for _, s in steps):
        print(f"ddpm-bench train: warning: {path}: dropped rows that are cut off or not a log row", file=sys.stderr)
    atomic_write_text(path, "\n".join([header, *keep]) + "\n")


def row_step(row: str, width: int) -> int | None:
    """The step of a whole row of `width` fields (a step, then numbers or empty cells), else None."""
    parts = row.split(",")
    if len(parts) != width:
        return None
    try:
        step = int(parts[0])
        [float(p) for p in parts[1:] if p]
    except ValueError:
        return None
    return step if step >= 0 else None
