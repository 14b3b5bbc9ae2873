"""Timed probes behind every `--dry-run` ETA: the median of a few calls after one warm-up call (which
also absorbs one-off costs such as torch.compile or first-call allocations)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

REPEATS = 3


def timed(fn: Callable[[], object], device: torch.device, repeats: int = REPEATS) -> float:
    """Median seconds of `repeats` calls of `fn` after one warm-up call (CUDA work waited for)."""
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if r > 0:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]
