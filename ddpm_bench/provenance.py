"""Where a number came from: versions, machine, command line, file hashes."""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddpm_bench.version import __version__


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's bytes with a `hashlib` algorithm ("sha256", "md5", ...), read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def sha256_array(a: np.ndarray) -> str:
    """sha256 of an array's bytes in C order (with its dtype and shape folded in)."""
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def versions() -> dict:
    return {
        "ddpm_bench": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
    }


def environment() -> dict:
    """Versions, machine and the command line, for every output file."""
    return {
        "versions": versions(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    # CPU results are byte-identical only between runs with the same number of threads
                    "torch_threads": torch.get_num_threads()},
        "argv": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
