"""The C allocator of a ddpm-bench process: keep freed memory for the next network call.

A CPU network call allocates and frees activations of a few MB. glibc's malloc serves such blocks with
mmap and gives them back to the system, or trims the heap, after every call, so each call page-faults its
memory in again. Here blocks up to 32 MiB come from the heap (glibc's largest mmap threshold) and the heap
is trimmed only above 1 GiB of free memory (what that gains: benchmarks/RESULTS.md, "allocator"). This
changes where memory comes from, never a number; the process keeps its peak memory until it exits.

Nothing is changed where the user chose: a preloaded allocator (LD_PRELOAD) or MALLOC_* variables.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems)
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (Linux only); True when they were set."""
    if not sys.platform.startswith("linux") or "LD_PRELOAD" in os.environ \
            or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
