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
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ddpm_bench import distributed, network_speed, run_dir
from ddpm_bench.errors import UserError
from ddpm_bench.models import Net
from ddpm_bench.models.source import ModelSource, ModelSpec
from ddpm_bench.outputs import OutputFileError, SampleManifest, sample_shard_name
from ddpm_bench.precision import resolve_device, with_precision
from ddpm_bench.probe import timed
from ddpm_bench.provenance import environment
from ddpm_bench.run_dir import RunDir, RunOptions, ShardPlan
from ddpm_bench.sampling import (
    PURPOSE_STEP,
    SamplerOptions,
    SamplingProcess,
    draw_samples,
    sample_noise,
    sampling_process,
    to_uint8,
)
from ddpm_bench.schedule import prior_warning
from ddpm_bench.shards import atomic_write_bytes, atomic_write_npz

COMMAND = "sample"
DEFAULT_BATCH_SIZE = 128  # samples per network call when none is given
SHARD_KEYS = ("arr_0",)
GRID, PROGRESSIVE_NPZ, PROGRESSIVE_PNG = SampleManifest.GRID, SampleManifest.PROGRESSIVE_NPZ, SampleManifest.PROGRESSIVE_PNG
GRID_SAMPLES = 64  # 8 x 8
PROGRESSIVE_ROWS = 8
shard_name = sample_shard_name


GRID_MIN_WIDTH = 256  # pixels: small images are enlarged (nearest neighbour) by a whole factor


def image_grid(images: np.ndarray, ncols: int, pad: int = 2, min_width: int = GRID_MIN_WIDTH) -> np.ndarray:
    """uint8 (N, H, W, C) -> one uint8 (rows*(kH+pad)+pad, ncols*(kW+pad)+pad, C) image, row-major, black
    padding, each image enlarged k times (nearest neighbour, k the smallest whole factor that makes the grid
    at least `min_width` wide)."""
    w = images.shape[2]
    k = max(1, math.ceil((min_width - pad * (ncols + 1)) / (ncols * w)))
    images = images.repeat(k, axis=1).repeat(k, axis=2)
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


def read_samples(rd: RunDir, plan: ShardPlan, limit: int) -> np.ndarray:
    """The first `limit` samples (uint8 NHWC) from the checked shards of a finished run."""
    parts, have, s = [], 0, 0
    while have < limit:
        parts.append(rd.read_shard(shard_name(s), plan.items(s), SHARD_KEYS)["arr_0"])
        have += len(parts[-1])
        s += 1
    return np.concatenate(parts)[:limit]


def sample_identity(source: ModelSource, sampler: SamplerOptions, process: SamplingProcess, shape, num: int,
                    shard_size: int) -> dict:
    """Everything that changes the samples: the model, the sampler options (with the resolved number of
    steps), the image shape, how many, and the shard size (which samples share a network call)."""
    return {"model": source.identity.sha256, "sampler": {**asdict(sampler), "steps": process.steps},
            "image_shape": list(shape), "num": num, "shard_size": shard_size}


def run_sample(model: ModelSpec, sampler: SamplerOptions, run: RunOptions, *, num: int, shard_size: int = 500,
               image_size: int | None = None, channels: int | None = None,
               progressive_every: int | None = None) -> SampleManifest | None:
    """Sample `num` images into `run.out`, in one process or in each process of a torchrun launch (see
    ddpm_bench.distributed): rank r samples the missing shards s with s % world == r; rank 0 claims the
    directory, writes manifest.json, grid.png and the progressive files, and returns the manifest (other
    ranks and dry runs return None)."""
    for flag, value in (("--num", num), ("--shard-size", shard_size)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if progressive_every is not None and progressive_every < 1:
        raise UserError(f"--progressive-every must be at least 1, got {progressive_every}")
    dev = distributed.process_device(resolve_device(run.device))
    run = replace(run, batch_size=run.batch_size or DEFAULT_BATCH_SIZE)
    with distributed.process_group(dev):
        return _run_sample(model, sampler, run, num, shard_size, image_size, channels, progressive_every, dev)


def progressive_is_whole(path: Path, every: int, rows: int) -> bool:
    """progressive.npz is there, readable, and recorded every `every` steps for `rows` samples."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(z["every"]) == every and len(z["index"]) == rows and z["x0_pred"].shape[0] == rows
    except Exception:  # missing, cut off or foreign: written again (it is a pure function of the run)
        return False


def _is_complete(rd: RunDir, plan: ShardPlan, progressive_every: int | None) -> bool:
    """The manifest is whole, of this run and says complete; every shard is whole and of this run; the grid
    and (when asked for) the progressive files are there, the latter recorded every `progressive_every`."""
    names = [GRID] + ([PROGRESSIVE_NPZ, PROGRESSIVE_PNG] if progressive_every else [])
    if not all((rd.path / n).exists() for n in names):
        return False
    if progressive_every and not progressive_is_whole(rd.path / PROGRESSIVE_NPZ, progressive_every,
                                                      min(PROGRESSIVE_ROWS, plan.n)):
        return False
    try:
        manifest = SampleManifest.read(rd.path)
    except OutputFileError:
        return False
    if manifest.run_id != rd.run_id or not manifest.complete:
        return False
    return all(rd.shard_is_valid(shard_name(s), plan.items(s), SHARD_KEYS, say=False)
               for s in range(plan.num_shards))


def _run_sample(model: ModelSpec, sampler: SamplerOptions, run: RunOptions, num: int, shard_size: int,
                image_size: int | None, channels: int | None, progressive_every: int | None,
                dev: torch.device) -> SampleManifest | None:
    main, world = distributed.is_main(), distributed.world_size()
    with run_dir.phase():  # every rank: inputs; rank 0 claims --out
        source = model.load(dev)
        if main and (w := prior_warning(source.diffusion.schedule())):
            print(f"ddpm-bench {COMMAND}: warning: {w}", file=sys.stderr)
        try:
            process = sampling_process(source.diffusion, sampler.steps)
        except ValueError as e:
            raise UserError(str(e)) from None
        shape = _image_shape(source, image_size, channels)
        channels_last = network_speed.choose_channels_last(source, run.channels_last, dev, shape)
        memory_format = network_speed.speed_up(source, channels_last, run.compile_mode)
        net = network_speed.with_memory_format(with_precision(source.net, sampler.precision, dev), memory_format)
        identity = sample_identity(source, sampler, process, shape, num, shard_size)
        if not run.dry_run:
            rd = run_dir.claim_collective(run.out, COMMAND, identity, force=run.force)
    K = process.steps

    if run.dry_run:
        if main:
            _dry_run(net, source.diffusion.T, shape, num, min(run.batch_size, num), K, sampler.seed, dev)
        return None

    plan = ShardPlan(num, shard_size)
    with run_dir.phase():  # rank 0 decides once what is done; every rank gets the same list
        complete = distributed.broadcast(_is_complete(rd, plan, progressive_every) if main else None)
        missing = [] if complete else \
            plan.missing(lambda s: rd.shard_is_valid(shard_name(s), plan.items(s), SHARD_KEYS))
        if main and not complete:
            for s in missing:  # a shard that does not belong (or is cut off) is sampled again, never kept
                (rd.path / shard_name(s)).unlink(missing_ok=True)
    if complete:
        if main:
            print(f"sample: {rd.path} is already complete", file=sys.stderr)
        return SampleManifest.read(rd.path) if main else None

    ranges = plan.ranges()
    done = [s for s in range(plan.num_shards) if s not in missing]
    manifest = _manifest(rd, source, process, sampler, shape, num, plan, done, dev, run.batch_size, world,
                         network_speed.describe(channels_last, run.compile_mode, dev, asked=run.channels_last))
    if main:
        manifest.write(rd.path)

    rows = min(PROGRESSIVE_ROWS, num)
    prog_rows: dict[int, np.ndarray] = {}
    start = time.perf_counter()
    with run_dir.phase():  # every rank: its own missing shards
        prog_t = _sample_shards(net, process, sampler, shape, dev, run.batch_size, rd, ranges, plan.owned(missing),
                                rows if progressive_every and main else 0, progressive_every, prog_rows, manifest,
                                run.progress and main, write_manifest=world == 1)
    if not main:
        return None

    # rank 0: grids and the final manifest, recounted from the checked shard files
    write_png(rd.path / GRID, image_grid(read_samples(rd, plan, min(GRID_SAMPLES, num)), ncols=8))
    if progressive_every:
        _write_progressive(rd.path, net, process, sampler, shape, progressive_every, rows, prog_rows, prog_t, dev,
                           run.batch_size, ranges)
    present = [s for s in range(plan.num_shards)
               if rd.shard_is_valid(shard_name(s), plan.items(s), SHARD_KEYS, say=False)]
    final = replace(manifest, count=int(sum(len(ranges[s]) for s in present)), shards=[shard_name(s) for s in present],
                    complete=len(present) == plan.num_shards)
    final.extra.update(network_evals=int(sum(len(ranges[s]) for s in missing)) * K,
                       seconds=time.perf_counter() - start,
                       outputs=[GRID] + ([PROGRESSIVE_NPZ, PROGRESSIVE_PNG] if progressive_every else []))
    final.write(rd.path)
    return final


def print_manifest(m: SampleManifest, out: str | Path) -> None:
    """What `sample` did: how many samples of which model, with what sampler, and where the grids are."""
    out = Path(out)
    grids = ", ".join(str(out / name) for name in m.extra.get("outputs", [GRID]) if name.endswith(".png"))
    seconds = m.extra.get("seconds")
    took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    print(f"sample: {m.count} of {m.num} samples ({m.sampler.get('steps')} steps, seed {m.seed}, model "
          f"{m.model_sha256[:12]}) in {out}{took}; grid: {grids}")


def _manifest(rd: RunDir, source: ModelSource, process: SamplingProcess, sampler: SamplerOptions, shape, num: int,
              plan: ShardPlan, done: list[int], dev: torch.device, batch_size: int, world: int,
              execution: dict) -> SampleManifest:
    cfg, K = source.diffusion, process.steps
    ranges = plan.ranges()
    extra = {
        "command": COMMAND,
        "options": asdict(sampler),
        "diffusion": asdict(cfg),
        "layout": "arr_0 uint8 (n, H, W, C); index int64 (n,); run_id (the run.json run_id)",
        "resumed": rd.resumed,
        "device": str(dev),
        "batch_size": batch_size,
        "network_execution": execution,
        "network_evals": 0,
        "seconds": 0.0,
        "environment": environment(),
    }
    if world > 1:
        extra["processes"] = world
    return SampleManifest(
        format=SampleManifest.FORMAT,
        run_id=rd.run_id,
        model=source.describe(),
        seed=sampler.seed,
        num=num,
        shard_size=plan.size,
        num_shards=plan.num_shards,
        image_shape=list(shape),
        count=int(sum(len(ranges[s]) for s in done)),
        complete=len(done) == plan.num_shards,
        shards=[shard_name(s) for s in done],
        sampler={
            "algorithm": "ancestral (DDPM Algorithm 2)" if sampler.sampler == "ancestral" else
                         f"ddim (Song et al. 2021), eta {sampler.eta:g}",
            "sampler": sampler.sampler,
            "eta": sampler.eta,
            "steps": K,
            "respaced": K != cfg.T,
            "timesteps": process.timesteps.tolist() if K != cfg.T else "all",
            "clip": sampler.clip,
            "precision": sampler.precision,
            "noise": "counter_normal(seed, [sample number, network index or T, purpose]); purpose 0 = x_T, 1 = z",
            "to_uint8": "round((x + 1) * 127.5) clipped to 0..255",
        },
        extra=extra,
    )


def shard_batches(shard: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The batches a shard's samples are drawn in: consecutive runs of `batch_size` from its first sample.
    A batch never spans two shards, so which samples share a network call (which can move the float32
    rounding of the network) depends on the shard and batch sizes only, never on processes or restarts."""
    return [shard[b: b + batch_size] for b in range(0, len(shard), batch_size)]


def _sample_shards(net: Net, process, sampler: SamplerOptions, shape, dev: torch.device, batch_size: int,
                   rd: RunDir, ranges: list[np.ndarray], shards: list[int], rows: int,
                   progressive_every: int | None, prog_rows: dict, manifest: SampleManifest, progress: bool,
                   write_manifest: bool):
    """Sample the listed shards, each in its own batches, and write each shard when it is complete; collect
    the progressive rows of samples j < `rows`. With `write_manifest` (one process) manifest.json is
    updated after each shard. Returns the progressive t."""
    K = process.steps
    done = [s for s in range(len(ranges)) if s not in shards]
    prog_t = None
    evals = 0
    start = time.perf_counter()
    bar = _progress(sum(len(ranges[s]) for s in shards), progress)
    for s in shards:
        parts = []
        for idx in shard_batches(ranges[s], batch_size):
            want_prog = int(idx[0]) < rows
            res = draw_samples(net, process, torch.from_numpy(idx), sampler.seed, shape, clip=sampler.clip,
                                   progressive_every=progressive_every if want_prog else None, device=dev,
                                   sampler=sampler.sampler, eta=sampler.eta)
            parts.append(to_uint8(res.x0))
            if want_prog:
                prog_t = res.progressive_t
                for r, j in enumerate(idx.tolist()):
                    if j < rows:
                        prog_rows[j] = to_uint8(res.progressive[r])
            evals += len(idx) * K
            bar.update(len(idx))
        rd.write_shard(shard_name(s), ranges[s], arr_0=np.concatenate(parts))
        done.append(s)
        if write_manifest:  # one process: the manifest follows every shard
            now = replace(manifest, count=int(sum(len(ranges[d]) for d in done)),
                          shards=[shard_name(d) for d in sorted(done)], complete=len(done) == len(ranges),
                          extra={**manifest.extra, "network_evals": evals, "seconds": time.perf_counter() - start})
            now.write(rd.path)
    bar.close()
    return prog_t


def _write_progressive(out_dir: Path, net: Net, process, sampler: SamplerOptions, shape, every: int, rows: int,
                       prog_rows: dict, prog_t, dev: torch.device, batch_size: int, ranges: list[np.ndarray]) -> None:
    """progressive.npz (`x0_pred` uint8 (rows, P, H, W, C), `t` (P,), `index`, `every`) and its grid PNG:
    one row per sample, one column per recorded x_0 prediction, t = T on the left."""
    path = out_dir / PROGRESSIVE_NPZ
    if len(prog_rows) < rows and progressive_is_whole(path, every, rows):
        return
    if len(prog_rows) < rows:  # the first samples came from an earlier run: redo their batches (deterministic)
        shard_size = len(ranges[0])
        for s in range((rows - 1) // shard_size + 1):
            for idx in shard_batches(ranges[s], batch_size):
                if int(idx[0]) >= rows:
                    break
                res = draw_samples(net, process, torch.from_numpy(idx), sampler.seed, shape, clip=sampler.clip,
                                       progressive_every=every, device=dev, sampler=sampler.sampler, eta=sampler.eta)
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
