"""Network precision: the network alone may run in TF32 or bfloat16; every bound term stays float64."""

from __future__ import annotations

import contextlib

import torch

from ddpm_bench.errors import UserError

PRECISIONS = ("fp32", "tf32", "bf16")


def resolve_device(device: str) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a device (cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine")
    return dev


@contextlib.contextmanager
def network_precision(precision: str, device: torch.device):
    """Context for network calls: fp32 (TF32 off), tf32 (TF32 matmul/conv on CUDA), bf16 (autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        if precision == "bf16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def with_precision(net, precision: str, device: torch.device):
    """`net` wrapped to run under `network_precision`, returning float32."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")

    def wrapped(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        with network_precision(precision, device):
            return net(x, i).to(torch.float32)

    return wrapped
