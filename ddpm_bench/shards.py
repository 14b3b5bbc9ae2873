"""Atomic writes, run manifests and resume for long-running commands.

A run directory holds `run.json` (the settings of the run, written first) and completed work written
atomically (temporary file + rename). A directory is resumed only when its `run.json` has the same
settings; anything else non-empty is refused unless `force` is given, so no command silently mixes
results from different settings.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_bench.errors import OutputDirError

RUN_MANIFEST = "run.json"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write() names no file: name it
            e.filename = str(path)
        raise


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, to_json(obj).encode())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def settings_difference(old: dict, new: dict) -> str:
    """A short description of the first keys whose values differ, for error messages."""
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k, '<missing>')!r} -> {new.get(k, '<missing>')!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else "")


def prepare_run_dir(out: str | Path, settings: dict, force: bool = False, command: str = "run") -> bool:
    """Make `out` ready for a run with `settings` (JSON-able). Returns True when an unfinished or
    finished run with the same settings is being resumed.

    - missing or empty directory: created, `run.json` written;
    - `run.json` with the same settings: resumed (completed shards are kept);
    - anything else: OutputDirError (exit 2) naming the difference, unless `force`, which empties it.
    """
    out = Path(out)
    settings = json.loads(to_json(settings))  # normalise (tuples -> lists, numpy -> python)
    manifest = out / RUN_MANIFEST
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if force:
            shutil.rmtree(out)
        elif manifest.exists():
            old = read_json(manifest)
            if old.get("command") == command and old.get("settings") == settings:
                return True
            if old.get("command") != command:
                raise OutputDirError(
                    f"--out {out}: holds a '{old.get('command')}' run, not '{command}'; use another directory or --force"
                )
            raise OutputDirError(
                f"--out {out}: holds a run with other settings ({settings_difference(old.get('settings', {}), settings)}); "
                "use another directory or --force"
            )
        else:
            raise OutputDirError(f"--out {out}: directory exists and is not empty; use another directory or --force")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest, {"command": command, "settings": settings})
    return False
