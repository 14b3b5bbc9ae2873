"""Timed probes behind every `--dry-run` ETA: the median of a few calls after one warm-up call (which
also absorbs one-off costs such as torch.compile or first-call allocations). A probe stays small: once
the timed calls have taken `BUDGET_S` seconds, it stops with what it has (at least one timed call), so a
dry run of a slow network costs a few of its calls, never minutes."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

REPEATS = 3
BUDGET_S = 5.0


def timed(fn: Callable[[], object], device: torch.device, repeats: int = REPEATS, budget_s: float = BUDGET_S) -> float:
    """Median seconds of up to `repeats` calls of `fn` after one warm-up call (CUDA work waited for),
    fewer once the timed calls have taken `budget_s` seconds."""
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if r > 0:
            times.append(time.perf_counter() - t0)
            if sum(times) >= budget_s:
                break
    return sorted(times)[len(times) // 2]
