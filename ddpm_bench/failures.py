"""Failures of the environment, reported by the CLI in one line instead of a traceback.

`report(exc, args)` is called once, from `ddpm_bench.cli.main`, for an exception that is not a
`UserError`; it prints one line on stderr and returns the exit status, or returns None for a failure it
does not know (a bug: the CLI prints the traceback). Known here:

- an exception raised inside a `--model` plug-in (`PluginError`, ddpm_bench.models.plugin_guard): exit 1;
- a full disk (ENOSPC, EDQUOT): exit 1, `no space left on device writing FILE`;
- a read-only file system (EROFS) or a permission refused (EACCES, EPERM): exit 1, naming the path;
- a path through a file (ENOTDIR, e.g. `--out /etc/passwd/x`), or a directory where a file is written
  (EISDIR, e.g. `gap ... --out DIR`): bad input, exit 2, naming the path;
- out of memory (torch.OutOfMemoryError, the CPU allocator's error, MemoryError): exit 1, naming the batch
  size to lower;
- stdout closed by its reader (BrokenPipeError, e.g. `ddpm-bench inspect ... | head -c1`): exit 1 quietly,
  with stdout redirected to /dev/null so that Python's final flush does not complain (the recipe of the
  Python documentation, "Note on SIGPIPE").

Atomic writes (ddpm_bench.shards) remove their temporary file and name the file they were writing, so a
failed write leaves nothing that looks complete and can be named here; rerunning the command resumes.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

from ddpm_bench.errors import PluginError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_ALLOWED = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}
RESUME = "run the same command again to resume"

# where a command without --batch-size sets its batch sizes
BATCH_SETTINGS = {
    "train": "training.batch_size (--set training.batch_size=N)",
    "reproduce": "training.batch_size, evaluation.nll.batch_size, evaluation.sample.batch_size or "
                 "evaluation.fid.batch_size (--set KEY=N)",
}


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA and, in recent torch, the CPU allocator), the CPU allocator's
    RuntimeError of older torch, and Python's MemoryError."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # never imported here just to check
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(exc, oom):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and "DefaultCPUAllocator" in text and "memory" in text


def report(exc: BaseException, args: Any) -> int | None:
    """Print the one line for a known failure (see the module docstring) and return the exit status;
    None when `exc` is not a known failure."""
    prog = f"ddpm-bench {getattr(args, 'command', None) or ''}".rstrip()
    found = describe(exc, args)
    if found is None:
        return None
    status, line = found
    if isinstance(exc, BrokenPipeError):
        _stdout_to_devnull()
    if line:
        print(f"{prog}: {line}", file=sys.stderr)
    return status


def describe(exc: BaseException, args: Any) -> tuple[int, str] | None:
    """(exit status, one line without the program name) of a known failure, or None. The line is empty
    for a closed stdout (nothing to say: its reader went away)."""
    if isinstance(exc, BrokenPipeError):
        return 1, ""
    if isinstance(exc, PluginError):
        return 1, str(exc)
    if is_out_of_memory(exc):
        return 1, _out_of_memory(exc, args)
    if isinstance(exc, OSError):
        return _os_error(exc, args)
    return None


def _out_of_memory(exc: BaseException, args: Any) -> str:
    what = "out of GPU memory" if "CUDA" in str(exc) else "out of memory"
    batch = getattr(args, "batch_size", None)
    if isinstance(batch, int):
        return f"{what} with --batch-size {batch}: lower it (e.g. --batch-size {max(1, batch // 2)}) and {RESUME}"
    setting = BATCH_SETTINGS.get(getattr(args, "command", None))
    if setting:
        return f"{what}: lower {setting} and {RESUME}"
    return f"{what}: free memory or use a smaller input and {RESUME}"


def _os_error(exc: OSError, args: Any) -> tuple[int, str] | None:
    path = exc.filename
    if exc.errno in NO_SPACE:
        what = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        if path is None:
            out = getattr(args, "out", None)
            where = f" writing under --out {out}" if out else ""
        else:
            where = f" writing {os.fsdecode(path)}"
        return 1, f"{what}{where}; free some space and {RESUME}"
    if path is None:
        return None
    path = os.fsdecode(path)
    if exc.errno in NOT_ALLOWED:
        return 1, f"cannot write {path}: {NOT_ALLOWED[exc.errno]}" if _writing(exc) else \
            f"cannot access {path}: {NOT_ALLOWED[exc.errno]}"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and not _is_dir(path):
        return 2, f"{path}: not a directory (a part of the path is a file)"
    if exc.errno == errno.ENAMETOOLONG:
        return 2, f"{_shorten(path)}: file name too long for the file system"
    if exc.errno == errno.EISDIR:
        return 2, f"{path}: is a directory, not a file"
    return None


def _is_dir(path: str) -> bool:
    try:
        return os.path.isdir(path)
    except (OSError, ValueError):
        return False


def _shorten(path: str, keep: int = 60) -> str:
    return path if len(path) <= 2 * keep else f"{path[:keep]}...{path[-keep:]} ({len(path)} characters)"


def _writing(exc: OSError) -> bool:
    """Whether `exc` was raised while making a directory or writing a file (from its traceback)."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in ("mkdir", "makedirs", "mkstemp", "atomic_write_bytes", "lock_dir", "claim"):
            return True
        tb = tb.tb_next
    return exc.errno == errno.EROFS  # only writes meet a read-only file system


def _stdout_to_devnull() -> None:
    """Python's recipe for a closed stdout: point the file descriptor at /dev/null so the interpreter's
    final flush of the buffered output does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced by something without a file descriptor
        pass
