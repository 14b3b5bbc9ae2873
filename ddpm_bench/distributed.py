"""Several processes under `torchrun`: gloo on the CPU, NCCL on CUDA (one GPU per process).

Work is split by shard number (rank r takes the shards s with s % world == r) and every shard is
computed exactly as one process would compute it, so results merged from N processes are the same bytes
as from one. A failure on one rank must not leave the others waiting forever: each phase ends with
`agree(error)`, a collective in which every rank says whether it failed; the failing rank re-raises its
own error (its message is printed by that rank) and the others raise `PeerFailed` naming it. A rank that
dies outright is stopped by torchrun; the process-group timeout is the last backstop.

Without torchrun (no RANK/WORLD_SIZE in the environment) every helper is a no-op for one process.
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

TIMEOUT_ENV = "DDPM_BENCH_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600  # longest a rank waits at a collective (e.g. for the slowest rank's last shard)


class PeerFailed(RuntimeError):
    """Another rank failed; its own message is on stderr. This rank stops without writing anything."""


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_rank() -> int:
    """This process's rank as torchrun set it, also before the process group exists (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


_local_only = False  # within `local_only()`: this process's own work, no collective


def is_initialized() -> bool:
    return not _local_only and dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def local_only():
    """Work of this process alone (an evaluation in memory, or rank 0's bound during training): every helper
    here acts as for one process, so no collective waits for ranks that do not take part."""
    global _local_only
    before, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = before


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def process_device(device: torch.device) -> torch.device:
    """Under torchrun a CUDA device becomes this process's own GPU, cuda:LOCAL_RANK."""
    if launched_by_torchrun() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def timeout_seconds() -> float:
    return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))


def init(device: torch.device) -> None:
    """Join the process group of a torchrun launch (no-op otherwise): NCCL for CUDA, gloo for the CPU."""
    if not launched_by_torchrun() or _local_only or dist.is_initialized():
        return
    timeout = datetime.timedelta(seconds=timeout_seconds())
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def teardown() -> None:
    if is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group_or_local(device: torch.device, local: bool):
    """`local_only()` for work of this process alone, else `process_group(device)`."""
    with local_only() if local else process_group(device):
        yield


@contextlib.contextmanager
def process_group(device: torch.device):
    """`init` on entry and `teardown` on exit, also when the body raises."""
    init(device)
    try:
        yield
    finally:
        teardown()


def _flag_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def failed_ranks(failed: bool) -> list[int]:
    """Collective: the ranks that report `failed` (all ranks must call it)."""
    if not is_initialized():
        return [0] if failed else []
    flags = torch.zeros(world_size(), dtype=torch.int32, device=_flag_device())
    flags[rank()] = int(failed)
    dist.all_reduce(flags)
    return [r for r, f in enumerate(flags.tolist()) if f]


def agree(error: BaseException | None) -> None:
    """End of a phase, on every rank: re-raise this rank's `error`, or PeerFailed if another rank failed."""
    failed = failed_ranks(error is not None)
    if error is not None:
        raise error
    if failed:
        raise PeerFailed(f"rank {rank()}: stopping because rank(s) {', '.join(map(str, failed))} failed (see above)")


def broadcast(obj):
    """Collective: rank 0's `obj` (picklable) on every rank; `obj` itself in one process."""
    if not is_initialized():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0, device=_flag_device())
    return box[0]
