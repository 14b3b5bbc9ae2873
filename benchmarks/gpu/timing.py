"""Timing on a GPU (or the smoke's CPU): wall time between device synchronisations after warm-up calls,
the machine's description, and the bf16 references a network's FLOP rate is compared with."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from collections.abc import Callable

import torch

# Dense (no sparsity) bf16 tensor-core peak by device name, TFLOP/s, from NVIDIA's datasheets; the first
# name that occurs in torch.cuda.get_device_name() wins. A device not listed has no datasheet peak here:
# its fraction is taken of the measured matmul rate only.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0, "NVIDIA H100 datasheet, PCIe, dense bf16"),
    ("H100 NVL", 835.0, "NVIDIA H100 datasheet, NVL, dense bf16"),
    ("H100", 989.4, "NVIDIA H100 datasheet, SXM, dense bf16"),
    ("H200 NVL", 835.0, "NVIDIA H200 datasheet, NVL, dense bf16"),
    ("H200", 989.4, "NVIDIA H200 datasheet, SXM, dense bf16"),
    ("A100", 312.0, "NVIDIA A100 datasheet, dense bf16"),
    ("L40S", 362.1, "NVIDIA L40S datasheet, dense bf16"),
)


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and message."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]


def guarded(row: dict, measure: Callable[[], dict]) -> dict:
    """`row` with `measure()`'s numbers and status "ok", or with "failed: <one line>" when it raises, so that
    one setting's failure (out of memory, a compiler error) costs only that setting."""
    try:
        return {**row, **measure(), "status": "ok"}
    except Exception as e:  # noqa: BLE001 - recorded in the row, which the report and the test both read
        if isinstance(e, torch.OutOfMemoryError):
            torch.cuda.empty_cache()
        return {**row, "status": f"failed: {one_line(e)}"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(fn: Callable[[], object], items_per_call: int, device: torch.device, min_time_s: float,
               min_calls: int = 3, warmup: int = 2) -> dict:
    """Items per second of `fn` called back to back: `warmup` untimed calls, one timed call to size the run,
    then as many calls as fill `min_time_s` (at least `min_calls`) between two synchronisations."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    calls = max(min_calls, math.ceil(min_time_s / max(first, 1e-6)))
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    seconds = time.perf_counter() - t0
    return {"calls": calls, "seconds": seconds, "per_s": calls * items_per_call / seconds,
            "ms_per_call": 1e3 * seconds / calls}


def bf16_peak(device: torch.device) -> dict:
    """The datasheet's dense bf16 peak of this device, or why there is none."""
    if device.type != "cuda":
        return {"tflops": None, "source": f"none for a {device.type} (no datasheet peak; see the matmul rate)"}
    name = torch.cuda.get_device_name(device)
    for key, tflops, source in BF16_PEAK_TFLOPS:
        if key in name:
            return {"tflops": tflops, "source": source, "matched": key}
    return {"tflops": None, "source": f"{name!r} is not in benchmarks/gpu/timing.py BF16_PEAK_TFLOPS"}


def matmul_tflops(device: torch.device, n: int, dtype: torch.dtype = torch.bfloat16, min_time_s: float = 0.5) -> dict:
    """The attained rate of an n x n x n matmul in `dtype` (2 n^3 FLOPs per call), TFLOP/s."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    rate = throughput(lambda: a @ b, 1, device, min_time_s)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "tflops": 2 * n**3 * rate["per_s"] / 1e12,
            "calls": rate["calls"]}


def describe_machine(device: torch.device) -> dict:
    """Device, versions and the settings that change speed, for results.json."""
    info = {"device": str(device), "python": platform.python_version(), "torch": str(torch.__version__),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
            else None, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch_defaults": {"cudnn.benchmark": torch.backends.cudnn.benchmark,
                               "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                               "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(device_name=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    multiprocessors=p.multi_processor_count, driver=_driver())
    else:
        info["device_name"] = info["cpu"]
    return info


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None
