"""A training run's CSV logs (log.csv, eval.csv): one row per step, trimmed on resume to the checkpoint's
step (the rows written after it are written again). A log whose header ends in `row_sha256` (eval.csv)
has rows that carry their own content check: the sha256 of the row's text before it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ddpm_bench.errors import UserError
from ddpm_bench.messages import warn
from ddpm_bench.shards import atomic_write_text

ROW_SHA256 = "row_sha256"  # the last column of a log whose rows carry their content hash


def hashed_row(fields: str) -> str:
    """A row that carries its own content check: `fields`, then the sha256 of their text."""
    return f"{fields},{hashlib.sha256(fields.encode()).hexdigest()}"


def trim_step_log(path: Path, header: str, step: int) -> None:
    """Keep the rows of `path` up to `step`, in the order of their steps (a missing file: the header alone);
    a row cut off or not of this log (a wrong field count, a step that is no integer >= 0, a value that is
    no number, a last line without its end, a content hash that is not the row's) is dropped, with a
    warning."""
    try:
        text = path.read_text(errors="replace") if path.exists() else ""
    except OSError as e:
        raise UserError(f"{path}: unreadable training log ({e.strerror}); move it away to start a new one") from None
    rows = text.splitlines()[1:]
    if rows and not text.endswith("\n"):  # a write cut short: its last row may have lost digits
        rows[-1] = ""
        cut = True
    else:
        cut = False
    width = len(header.split(","))
    hashed = header.split(",")[-1] == ROW_SHA256
    steps = [(r, row_step(r, width, hashed)) for r in rows if r.strip()]
    keep = sorted(((s, r) for r, s in steps if s is not None and s <= step), key=lambda sr: sr[0])
    if cut or any(s is None for _, s in steps):
        warn(f"{path}: dropped rows that are cut off, not a log row or changed since they were written")
    atomic_write_text(path, "\n".join([header, *(r for _, r in keep)]) + "\n")


def logged_steps(path: Path) -> set[int]:
    """The steps of the rows of a log `trim_step_log` has checked (none when it is missing)."""
    rows = path.read_text().splitlines()[1:] if path.exists() else []
    return {int(r.split(",", 1)[0]) for r in rows if r.strip()}


def row_step(row: str, width: int, hashed: bool = False) -> int | None:
    """The step of a whole row of `width` fields (a step, then numbers or empty cells; with `hashed`, then
    the sha256 of the text before it), else None."""
    parts = row.split(",")
    if len(parts) != width:
        return None
    if hashed:
        if hashed_row(row.rpartition(",")[0]) != row:
            return None
        parts = parts[:-1]
    try:
        step = int(parts[0])
        [float(p) for p in parts[1:] if p]
    except ValueError:
        return None
    return step if step >= 0 else None
