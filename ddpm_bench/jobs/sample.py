"""`ddpm-bench sample`: ancestral samples in resumable shards, a manifest, a sample grid and, on request,
a progressive-generation grid (DDPM Figure 6).

Shard s (`samples_XXXXXX.npz`) holds sample numbers [s * shard_size, (s + 1) * shard_size) as `arr_0`
uint8 (n, H, W, C) and `index` int64 (n,); which samples a shard holds depends on the shard size only.
The noise of each sample depends on (seed, sample number) only, and each shard is sampled in its own
batches (`shard_batches`), so restarts and the process count never change a byte of the output; another
batch size can change the network's float32 rounding only.
"""

from __future__ import annotations

import io
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ddpm_bench import distributed, network_speed
from ddpm_bench.data.sample_dir import MANIFEST
from ddpm_bench.errors import DataError, UserError
from ddpm_bench.models import Net
from ddpm_bench.models.source import ModelSource, load_model_source
from ddpm_bench.precision import resolve_device, with_precision
from ddpm_bench.probe import timed
from ddpm_bench.provenance import environment
from ddpm_bench.sampling import (
    PURPOSE_STEP,
    ancestral_sample,
    sample_noise,
    sampling_process,
    to_uint8,
)
from ddpm_bench.shards import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npz,
    prepare_run_dir,
    read_json,
)

GRID = "grid.png"
PROGRESSIVE_NPZ = "progressive.npz"
PROGRESSIVE_PNG = "progressive.png"
GRID_SAMPLES = 64  # 8 x 8
PROGRESSIVE_ROWS = 8
FORMAT = "ddpm-bench-samples/1"


def shard_name(s: int) -> str:
    return f"samples_{s:06d}.npz"


def image_grid(images: np.ndarray, ncols: int, pad: int = 2) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (rows*(H+pad)+pad, ncols*(W+pad)+pad, C) image, row-major, black padding."""
    n, h, w, c = images.shape
    rows = max(1, math.ceil(n / ncols))
    grid = np.zeros((rows * (h + pad) + pad, ncols * (w + pad) + pad, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[k]
    return grid


def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _image_shape(source: ModelSource, image_size: int | None, channels: int | None) -> tuple[int, int, int]:
    if source.image_shape is not None:
        C, H, W = source.image_shape
        if image_size is not None and image_size != H:
            raise UserError(f"--image-size {image_size} contradicts the model, which makes {H}x{W} images")
        if channels is not None and channels != C:
            raise UserError(f"--channels {channels} contradicts the model, which makes {C}-channel images")
        return (C, H, W)
    size = 32 if image_size is None else image_size
    C = 3 if channels is None else channels
    if size < 1 or C < 1:
        raise UserError(f"--image-size and --channels must be positive, got {size} and {C}")
    return (C, size, size)


def _load_shard_index(path: Path, expected: np.ndarray) -> None:
    try:
        with np.load(path) as z:
            index = z["index"]
            shape = z["arr_0"].shape
    except Exception as e:
        raise DataError(f"{path}: unreadable sample shard ({type(e).__name__}: {e}); delete it to recompute") from None
    if not np.array_equal(index, expected) or shape[0] != len(expected):
        raise DataError(f"{path}: holds samples {index[:1].tolist()}.. not {expected[:1].tolist()}..; "
                        "delete it to recompute")


def read_samples(out: Path, limit: int, shard_size: int) -> np.ndarray:
    """The first `limit` samples (uint8 NHWC) from the shards of a finished run."""
    parts, have, s = [], 0, 0
    while have < limit:
        with np.load(out / shard_name(s)) as z:
            parts.append(z["arr_0"])
        have += len(parts[-1])
        s += 1
    return np.concatenate(parts)[:limit]


def run_sample(*, ckpt: str | None, model: str | None, weights: str = "ema", diffusion_flags: dict | None = None,
               num: int, batch_size: int = 128, seed: int = 0, steps: int | None = None,
               image_size: int | None = None, channels: int | None = None, clip: bool = True,
               device: str = "auto", precision: str = "fp32", shard_size: int = 1000,
               progressive_every: int | None = None, out: str, force: bool = False, dry_run: bool = False,
               progress: bool = True, compile_mode: str | None = None, channels_last: bool = False) -> dict | None:
    """Sample `num` images into `out`, in one process or in each process of a torchrun launch (see
    ddpm_bench.distributed): rank r samples the missing shards s with s % world == r; rank 0 prepares `out`,
    writes manifest.json, grid.png and the progressive files, and returns the manifest (other ranks and
    dry runs return None)."""
    for flag, value in (("--num", num), ("--batch-size", batch_size), ("--shard-size", shard_size)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if progressive_every is not None and progressive_every < 1:
        raise UserError(f"--progressive-every must be at least 1, got {progressive_every}")
    dev = distributed.process_device(resolve_device(device))
    with distributed.process_group(dev):
        return _run_sample(ckpt=ckpt, model=model, weights=weights, diffusion_flags=diffusion_flags or {}, num=num,
                           batch_size=batch_size, seed=seed, steps=steps, image_size=image_size, channels=channels,
                           clip=clip, dev=dev, precision=precision, shard_size=shard_size,
                           progressive_every=progressive_every, out_dir=Path(out), force=force, dry_run=dry_run,
                           progress=progress, compile_mode=compile_mode, channels_last=channels_last)


def _is_complete(out_dir: Path, num_shards: int, progressive_every: int | None) -> bool:
    """Every shard, the manifest, the grid and (when asked for) the progressive files are present."""
    names = [MANIFEST, GRID] + ([PROGRESSIVE_NPZ, PROGRESSIVE_PNG] if progressive_every else [])
    names += [shard_name(s) for s in range(num_shards)]
    return all((out_dir / n).exists() for n in names)


def _run_sample(*, ckpt, model, weights, diffusion_flags, num, batch_size, seed, steps, image_size, channels, clip,
                dev, precision, shard_size, progressive_every, out_dir: Path, force, dry_run,
                progress, compile_mode, channels_last) -> dict | None:
    main, rank, world = distributed.is_main(), distributed.rank(), distributed.world_size()
    error = None
    try:  # phase 1 (every rank): inputs; rank 0 prepares --out
        source = load_model_source(ckpt, model, weights, diffusion_flags, dev)
        cfg = source.diffusion
        try:
            process = sampling_process(cfg, steps)
        except ValueError as e:
            raise UserError(str(e)) from None
        shape = _image_shape(source, image_size, channels)
        memory_format = network_speed.speed_up(source, channels_last, compile_mode)
        net = network_speed.with_memory_format(with_precision(source.net, precision, dev), memory_format)
        settings = {"model": source.provenance, "diffusion": asdict(cfg), "image_shape": list(shape), "num": num,
                    "seed": seed, "steps": process.steps, "clip": clip, "precision": precision,
                    "shard_size": shard_size}
        resumed = prepare_run_dir(out_dir, settings, force=force, command="sample") if main and not dry_run else True
    except Exception as e:
        error = e
    distributed.agree(error)
    K = process.steps

    if dry_run:
        if main:
            _dry_run(net, cfg.T, shape, num, min(batch_size, num), K, seed, dev)
        return None

    num_shards = math.ceil(num / shard_size)
    ranges = [np.arange(s * shard_size, min((s + 1) * shard_size, num), dtype=np.int64) for s in range(num_shards)]
    if _is_complete(out_dir, num_shards, progressive_every):
        if main:
            print(f"sample: {out_dir} is already complete", file=sys.stderr)
        return read_json(out_dir / MANIFEST) if main else None

    error = None
    try:  # phase 2 (every rank, after rank 0 prepared --out): which shards are done; rank 0 writes the manifest
        done = _done_shards(out_dir, ranges)
        missing = [s for s in range(num_shards) if s not in done]
        manifest = _manifest(source, process, seed, clip, precision, shape, num, shard_size, ranges, done,
                             resumed, dev, batch_size, world, network_speed.describe(channels_last, compile_mode, dev))
        if main:
            atomic_write_json(out_dir / MANIFEST, manifest)
    except Exception as e:
        error = e
    distributed.agree(error)

    rows = min(PROGRESSIVE_ROWS, num)
    mine = [s for s in missing if s % world == rank]
    prog_rows: dict[int, np.ndarray] = {}
    prog_t = None
    start = time.perf_counter()
    error = None
    try:  # phase 3 (every rank): its own missing shards
        prog_t = _sample_shards(net, process, seed, shape, clip, dev, batch_size, out_dir, ranges, mine,
                                rows if progressive_every and main else 0, progressive_every, prog_rows, manifest,
                                progress and main, write_manifest=world == 1)
    except Exception as e:
        error = e
    distributed.agree(error)
    if not main:
        return None

    # phase 4 (rank 0): grids and the final manifest, recounted from the shard files present
    grid_images = read_samples(out_dir, min(GRID_SAMPLES, num), shard_size)
    write_png(out_dir / GRID, image_grid(grid_images, ncols=8))
    if progressive_every:
        _write_progressive(out_dir, net, process, seed, shape, clip, progressive_every, rows, prog_rows, prog_t, dev,
                           batch_size, ranges)
    present = [s for s in range(num_shards) if (out_dir / shard_name(s)).exists()]
    manifest.update(count=int(sum(len(ranges[s]) for s in present)), shards=[shard_name(s) for s in present],
                    complete=len(present) == num_shards,
                    network_evals=int(sum(len(ranges[s]) for s in missing)) * K,
                    seconds=time.perf_counter() - start,
                    outputs=[GRID] + ([PROGRESSIVE_NPZ, PROGRESSIVE_PNG] if progressive_every else []))
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest


def _done_shards(out_dir: Path, ranges: list[np.ndarray]) -> list[int]:
    """The shards already on disk (each checked to hold the expected sample numbers)."""
    done = []
    for s, expected in enumerate(ranges):
        if (out_dir / shard_name(s)).exists():
            _load_shard_index(out_dir / shard_name(s), expected)
            done.append(s)
    return done


def _manifest(source: ModelSource, process, seed: int, clip: bool, precision: str, shape, num: int,
              shard_size: int, ranges: list[np.ndarray], done: list[int], resumed: bool, dev: torch.device,
              batch_size: int, world: int, execution: dict) -> dict:
    cfg, K = source.diffusion, process.steps
    manifest = {
        "format": FORMAT,
        "command": "sample",
        "model": source.provenance,
        "diffusion": asdict(cfg),
        "seed": seed,
        "sampler": {
            "algorithm": "ancestral (DDPM Algorithm 2)",
            "steps": K,
            "respaced": K != cfg.T,
            "timesteps": process.timesteps.tolist() if K != cfg.T else "all",
            "clip": clip,
            "precision": precision,
            "noise": "counter_normal(seed, [sample number, network index or T, purpose]); purpose 0 = x_T, 1 = z",
            "to_uint8": "round((x + 1) * 127.5) clipped to 0..255",
        },
        "image_shape": list(shape),
        "layout": "arr_0 uint8 (n, H, W, C); index int64 (n,)",
        "num": num,
        "shard_size": shard_size,
        "num_shards": len(ranges),
        "count": int(sum(len(ranges[s]) for s in done)),
        "complete": len(done) == len(ranges),
        "shards": [shard_name(s) for s in done],
        "resumed": resumed,
        "device": str(dev),
        "batch_size": batch_size,
        "network_execution": execution,
        "network_evals": 0,
        "seconds": 0.0,
        "environment": environment(),
    }
    if world > 1:
        manifest["processes"] = world
    return manifest


def shard_batches(shard: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The batches a shard's samples are drawn in: consecutive runs of `batch_size` from its first sample.
    A batch never spans two shards, so which samples share a network call (which can move the float32
    rounding of the network) depends on the shard and batch sizes only, never on processes or restarts."""
    return [shard[b: b + batch_size] for b in range(0, len(shard), batch_size)]


def _sample_shards(net: Net, process, seed: int, shape, clip: bool, dev: torch.device, batch_size: int,
                   out_dir: Path, ranges: list[np.ndarray], shards: list[int], rows: int,
                   progressive_every: int | None, prog_rows: dict, manifest: dict, progress: bool,
                   write_manifest: bool):
    """Sample the listed shards, each in its own batches, and write each shard when it is complete; collect
    the progressive rows of samples j < `rows`. With `write_manifest` (one process) manifest.json is
    updated after each shard. Returns the progressive t."""
    K = process.steps
    done = [s for s in range(len(ranges)) if s not in shards]
    prog_t = None
    start = time.perf_counter()
    bar = _progress(sum(len(ranges[s]) for s in shards), progress)
    for s in shards:
        parts = []
        for idx in shard_batches(ranges[s], batch_size):
            want_prog = int(idx[0]) < rows
            res = ancestral_sample(net, process, torch.from_numpy(idx), seed, shape, clip=clip,
                                   progressive_every=progressive_every if want_prog else None, device=dev)
            parts.append(to_uint8(res.x0))
            if want_prog:
                prog_t = res.progressive_t
                for r, j in enumerate(idx.tolist()):
                    if j < rows:
                        prog_rows[j] = to_uint8(res.progressive[r])
            manifest["network_evals"] += len(idx) * K
            bar.update(len(idx))
        atomic_write_npz(out_dir / shard_name(s), arr_0=np.concatenate(parts), index=ranges[s])
        done.append(s)
        if write_manifest:
            manifest.update(count=int(sum(len(ranges[d]) for d in done)), shards=[shard_name(d) for d in sorted(done)],
                            complete=len(done) == len(ranges), seconds=time.perf_counter() - start)
            atomic_write_json(out_dir / MANIFEST, manifest)
    bar.close()
    return prog_t


def _write_progressive(out_dir: Path, net: Net, process, seed: int, shape, clip: bool, every: int, rows: int,
                       prog_rows: dict, prog_t, dev: torch.device, batch_size: int, ranges: list[np.ndarray]) -> None:
    """progressive.npz (`x0_pred` uint8 (rows, P, H, W, C), `t` (P,), `index`, `every`) and its grid PNG:
    one row per sample, one column per recorded x_0 prediction, t = T on the left."""
    path = out_dir / PROGRESSIVE_NPZ
    if len(prog_rows) < rows and path.exists():
        with np.load(path) as z:
            if int(z["every"]) == every and len(z["index"]) == rows:
                return
    if len(prog_rows) < rows:  # the first samples came from an earlier run: redo their batches (deterministic)
        shard_size = len(ranges[0])
        for s in range((rows - 1) // shard_size + 1):
            for idx in shard_batches(ranges[s], batch_size):
                if int(idx[0]) >= rows:
                    break
                res = ancestral_sample(net, process, torch.from_numpy(idx), seed, shape, clip=clip,
                                       progressive_every=every, device=dev)
                prog_t = res.progressive_t
                for r, j in enumerate(idx.tolist()):
                    if j < rows:
                        prog_rows[j] = to_uint8(res.progressive[r])
    x0_pred = np.stack([prog_rows[j] for j in range(rows)])  # (rows, P, H, W, C)
    atomic_write_npz(path, x0_pred=x0_pred, t=prog_t.numpy(), index=np.arange(rows, dtype=np.int64),
                     every=np.int64(every))
    P = x0_pred.shape[1]
    write_png(out_dir / PROGRESSIVE_PNG, image_grid(x0_pred.reshape(rows * P, *x0_pred.shape[2:]), ncols=P))


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="sample", disable=not enabled or total == 0, file=sys.stderr)


def _dry_run(net: Net, T: int, shape, num: int, batch: int, K: int, seed: int, dev: torch.device) -> None:
    """Print the number of network evaluations and an ETA from one batch at one timestep (median of 3)."""
    x = torch.zeros((batch, *shape), dtype=torch.float32, device=dev)
    i = torch.full((batch,), T - 1, dtype=torch.int64, device=dev)
    idx = torch.arange(batch, dtype=torch.int64, device=dev)
    with torch.inference_mode():
        per_step = timed(lambda: (net(x, i), sample_noise(seed, idx, T - 1, PURPOSE_STEP, shape)), dev)
    batches = math.ceil(num / batch)
    eta = per_step * batches * K
    print(f"dry run: {num} samples x {K} steps = {num * K} network evaluations "
          f"({batches} batches of up to {batch} on {dev}); one batch at one timestep took {per_step:.4f} s "
          f"-> ETA {eta:.0f} s ({eta / 3600:.2f} h)")
