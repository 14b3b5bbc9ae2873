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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ddpm_bench import distributed, run_dir
from ddpm_bench.arguments import given, named
from ddpm_bench.dry_run import DryRun, DryRunStage
from ddpm_bench.errors import UserError
from ddpm_bench.fingerprint import run_fingerprint
from ddpm_bench.messages import note, warn
from ddpm_bench.models.formats import load_network
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.network import Execution, Network
from ddpm_bench.outputs import OutputFileError, SampleManifest, record_files, sample_shard_name, verify_files
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
DEFAULT_SHARD_SIZE = 500  # samples per shard file
SHARD_KEYS = ("arr_0",)
GRID, PROGRESSIVE_NPZ, PROGRESSIVE_PNG = SampleManifest.GRID, SampleManifest.PROGRESSIVE_NPZ, SampleManifest.PROGRESSIVE_PNG
GRID_SAMPLES = SampleManifest.GRID_SAMPLES
PROGRESSIVE_ROWS = SampleManifest.PROGRESSIVE_ROWS
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


@dataclass(frozen=True)
class SampleJob:
    """Everything one `sample` run needs, built once from flags, a recipe's stage or a Python call."""

    model: ModelSpec | Network
    num: int
    options: SamplerOptions = SamplerOptions()
    execution: Execution = Execution()
    run: RunOptions = RunOptions()
    image_size: int | None = None  # H = W of a model that does not know its image shape (default 32)
    channels: int | None = None  # C of such a model (default 3)
    progressive_every: int | None = None  # also record the x0 prediction every N steps (paper Figure 6)

    def __post_init__(self) -> None:
        if isinstance(self.num, bool) or not isinstance(self.num, int) or self.num < 1:
            raise UserError(f"{named('num')} must be at least 1, got {self.num}")
        if self.progressive_every is not None and self.progressive_every < 1:
            raise UserError(f"{named('progressive_every')} must be at least 1, got {self.progressive_every}")

    @property
    def shard_size(self) -> int:
        return self.run.shard_size or DEFAULT_SHARD_SIZE

    @property
    def batch_size(self) -> int:
        return self.run.batch_size or DEFAULT_BATCH_SIZE


@dataclass(frozen=True)
class SampleResult:
    """What a sample run made: its manifest, the sample directory (None for samples made in memory, which
    `in_memory` then holds) and, with `progressive_every`, the progressive x0 predictions."""

    manifest: SampleManifest
    path: Path | None = None
    in_memory: np.ndarray | None = None  # (num, H, W, C) uint8
    progressive: np.ndarray | None = None  # (rows, P, H, W, C) uint8
    complete_before: bool = False  # the directory held this complete run already

    def __repr__(self) -> str:
        m = self.manifest
        where = f"in {self.path}" if self.path is not None else "in memory"
        c, h, w = m.image_shape
        return (f"<SampleResult {m.count:,} of {m.num:,} samples ({h}x{w}x{c} uint8), {m.sampler.get('algorithm')}, "
                f"{m.sampler.get('steps')} steps, seed {m.seed}, model {m.model_sha256[:12]}, {m.network_evals:,} "
                f"network evaluations in {m.seconds:.1f} s; {where}>")

    @property
    def samples(self) -> np.ndarray:
        """(num, H, W, C) uint8 in sample order (read from the directory's checked shards)."""
        if self.in_memory is not None:
            return self.in_memory
        from ddpm_bench.data.sample_dir import load_sample_dir

        return load_sample_dir(self.path)


def image_shape_of(network: Network, image_size: int | None, channels: int | None) -> tuple[int, int, int]:
    if network.image_shape is not None:
        C, H, W = network.image_shape
        if image_size is not None and image_size != H:
            raise UserError(f"{given('image_size', image_size)} contradicts the model, which makes {H}x{W} images")
        if channels is not None and channels != C:
            raise UserError(f"{given('channels', channels)} contradicts the model, which makes {C}-channel images")
        return (C, H, W)
    size = 32 if image_size is None else image_size
    C = 3 if channels is None else channels
    if size < 1 or C < 1:
        raise UserError(f"{named('image_size')} and {named('channels')} must be positive, got {size} and {C}")
    return (C, size, size)


def read_samples(rd: RunDir, plan: ShardPlan, limit: int) -> np.ndarray:
    """The first `limit` samples (uint8 NHWC) from the checked shards of a finished run."""
    parts, have, s = [], 0, 0
    while have < limit:
        parts.append(rd.read_shard(shard_name(s), plan.items(s), SHARD_KEYS)["arr_0"])
        have += len(parts[-1])
        s += 1
    return np.concatenate(parts)[:limit]


def sample_identity(network: Network, sampler: SamplerOptions, process: SamplingProcess, shape, num: int,
                    shard_size: int) -> dict:
    """Everything that changes the samples: the model and its precision, the sampler options (with the
    resolved number of steps), the image shape, how many, and the shard size (which samples share a
    network call)."""
    return {"model": network.identity.sha256, "precision": network.precision,
            "sampler": {**asdict(sampler), "steps": process.steps}, "image_shape": list(shape), "num": num,
            "shard_size": shard_size}


def run_sample(job: SampleJob) -> SampleResult | DryRun | None:
    """Sample `job.num` images, in one process or in each process of a torchrun launch (see
    ddpm_bench.distributed): rank r samples the missing shards s with s % world == r; rank 0 claims the
    directory, writes manifest.json, grid.png and the progressive files, and returns the result (or, with
    `job.run.dry_run`, what the run would cost; other ranks return None). Without `job.run.out` the samples are made in memory, in the same
    shards and batches."""
    device = job.model.device if isinstance(job.model, Network) else Network.device_of(job.execution)
    with distributed.process_group_or_local(device, local=job.run.out is None):  # in memory: this process's own
        return _run_sample(job)


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
        verify_files(rd.path, manifest.files, str(rd.path / SampleManifest.FILE))
    except OutputFileError as e:
        note(f"{e}; writing it again")
        return False
    if manifest.run_id != rd.run_id or not manifest.complete:
        return False
    return all(rd.shard_is_valid(shard_name(s), plan.items(s), SHARD_KEYS, say=False)
               for s in range(plan.num_shards))


class _Sampling:
    """One sample run's network, process and shard plan, and how to draw a shard."""

    def __init__(self, job: SampleJob, network: Network, process: SamplingProcess, shape: tuple[int, int, int]):
        self.job, self.network, self.process, self.shape = job, network, process, shape
        self.plan = ShardPlan(job.num, job.shard_size)
        self.rows = min(PROGRESSIVE_ROWS, job.num) if job.progressive_every else 0
        self.progressive: dict[int, np.ndarray] = {}  # sample j < rows -> its progressive row
        self.progressive_t = None

    def batch(self, idx: np.ndarray) -> np.ndarray:
        """uint8 samples of the numbers `idx`, keeping the progressive rows of the first samples."""
        every = self.job.progressive_every if int(idx[0]) < self.rows else None
        res = draw_samples(self.network, self.process, torch.from_numpy(idx), self.shape, self.job.options,
                           progressive_every=every)
        if every:
            self.progressive_t = res.progressive_t
            for r, j in enumerate(idx.tolist()):
                if j < self.rows:
                    self.progressive[j] = to_uint8(res.progressive[r])
        return to_uint8(res.x0)

    def shard(self, s: int, bar) -> np.ndarray:
        """Shard s, drawn in its own batches."""
        parts = []
        for idx in shard_batches(self.plan.items(s), self.job.batch_size):
            parts.append(self.batch(idx))
            bar.update(len(idx))
        return np.concatenate(parts)

    def progressive_array(self) -> np.ndarray:
        """(rows, P, H, W, C) uint8, redrawing the first samples' batches when an earlier run made them."""
        if len(self.progressive) < self.rows:
            for s in range((self.rows - 1) // self.plan.size + 1):
                for idx in shard_batches(self.plan.items(s), self.job.batch_size):
                    if int(idx[0]) >= self.rows:
                        break
                    self.batch(idx)
        return np.stack([self.progressive[j] for j in range(self.rows)])


def _run_sample(job: SampleJob) -> SampleResult | DryRun | None:
    main, world, run = distributed.is_main(), distributed.world_size(), job.run
    rd = None
    with run_dir.phase():  # every rank: inputs; rank 0 claims --out
        network = load_network(job.model, job.execution)
        if network.convention.continuous:
            raise UserError(f"model {network.identity.origin} takes a continuous noise level "
                            f"({network.convention.noise_input!r}); ddpm-bench samples models of discrete steps only")
        if main and (w := prior_warning(network.diffusion.schedule())):
            warn(w)
        try:
            process = sampling_process(network.diffusion, job.options.steps)
        except ValueError as e:
            raise UserError(f"{given('steps', job.options.steps)}: {e}") from None
        shape = image_shape_of(network, job.image_size, job.channels)
        identity = sample_identity(network, job.options, process, shape, job.num, job.shard_size)
        if run.out is not None and not run.dry_run:
            rd = run_dir.claim_collective(run.out, COMMAND, identity, force=run.force,
                                          fingerprint=run_fingerprint(network, shape) if main else None)
    work = _Sampling(job, network, process, shape)
    plan = work.plan
    if run.dry_run:
        return _dry_run(network, shape, job.num, min(job.batch_size, job.num), process.steps,
                        job.options.seed) if main else None
    if rd is None:
        return _sample_in_memory(work, identity)

    with run_dir.phase():  # rank 0 decides once what is done; every rank gets the same list
        complete = distributed.broadcast(_is_complete(rd, plan, job.progressive_every) if main else None)
        missing = [] if complete else \
            plan.missing(lambda s: rd.shard_is_valid(shard_name(s), plan.items(s), SHARD_KEYS))
        if main and not complete:
            for s in missing:  # a shard that does not belong (or is cut off) is sampled again, never kept
                (rd.path / shard_name(s)).unlink(missing_ok=True)
    if complete:
        if not main:
            return None
        return SampleResult(SampleManifest.read(rd.path), rd.path, complete_before=True)

    done = [s for s in range(plan.num_shards) if s not in missing]
    manifest = _manifest(rd.run_id, rd.resumed, network, process, job, shape, plan, done, world)
    if main:
        manifest.write(rd.path)
    start, evals = time.perf_counter(), 0
    owned = plan.owned(missing)
    with run_dir.phase():  # every rank: its own missing shards
        bar = _progress(sum(len(plan.items(s)) for s in owned), run.progress and main)
        for s in owned:
            rd.write_shard(shard_name(s), plan.items(s), arr_0=work.shard(s, bar))
            done.append(s)
            evals += len(plan.items(s)) * process.steps
            if world == 1:  # one process: the manifest follows every shard
                _recount(manifest, plan, done, network_evals=evals, seconds=time.perf_counter() - start).write(rd.path)
        bar.close()
    if not main:
        return None

    # rank 0: grids and the final manifest, recounted from the checked shard files
    write_png(rd.path / GRID, image_grid(read_samples(rd, plan, min(GRID_SAMPLES, job.num)), ncols=8))
    progressive = None
    if job.progressive_every:
        progressive = _write_progressive(rd.path, work)
    present = [s for s in range(plan.num_shards)
               if rd.shard_is_valid(shard_name(s), plan.items(s), SHARD_KEYS, say=False)]
    final = _recount(manifest, plan, present, network_evals=sum(len(plan.items(s)) for s in missing) * process.steps,
                     seconds=time.perf_counter() - start)
    outputs = [GRID] + ([PROGRESSIVE_NPZ, PROGRESSIVE_PNG] if job.progressive_every else [])
    final = replace(final, outputs=outputs, files=record_files(rd.path, outputs))
    final.write(rd.path)
    return SampleResult(final, rd.path, None, progressive)


def _sample_in_memory(work: _Sampling, identity: dict) -> SampleResult:
    plan, job = work.plan, work.job
    start = time.perf_counter()
    bar = _progress(job.num, job.run.progress)
    samples = np.concatenate([work.shard(s, bar) for s in range(plan.num_shards)])
    bar.close()
    run_id = run_dir.run_id_of(COMMAND, run_dir.normalise(identity))
    manifest = _manifest(run_id, False, work.network, work.process, job, work.shape, plan,
                         list(range(plan.num_shards)), 1)
    manifest = replace(manifest, network_evals=job.num * work.process.steps, seconds=time.perf_counter() - start)
    return SampleResult(manifest, None, samples, work.progressive_array() if work.rows else None)


def _recount(manifest: SampleManifest, plan: ShardPlan, present: list[int], **statistics) -> SampleManifest:
    """The manifest with its count, shards and completeness from the shards `present` (and `statistics`:
    network_evals, seconds)."""
    return replace(manifest, count=int(sum(len(plan.items(s)) for s in present)),
                   shards=[shard_name(s) for s in sorted(present)], complete=len(present) == plan.num_shards,
                   **statistics)


def _manifest(run_id: str, resumed: bool, network: Network, process: SamplingProcess, job: SampleJob, shape,
              plan: ShardPlan, done: list[int], world: int) -> SampleManifest:
    cfg, K, sampler = network.diffusion, process.steps, job.options
    extra = {
        "command": COMMAND,
        "options": asdict(sampler),
        "diffusion": asdict(cfg),
        "layout": "arr_0 uint8 (n, H, W, C); index int64 (n,); run_id (the run.json run_id)",
        "resumed": resumed,
        "device": str(network.device),
        "batch_size": job.batch_size,
        "network_execution": network.describe_execution(),
        "environment": environment(),
    }
    if world > 1:
        extra["processes"] = world
    return _recount(SampleManifest(
        format=SampleManifest.FORMAT,
        run_id=run_id,
        model=network.describe(),
        seed=sampler.seed,
        num=job.num,
        shard_size=plan.size,
        num_shards=plan.num_shards,
        image_shape=list(shape),
        count=0,
        complete=False,
        shards=[],
        sampler={
            "algorithm": "ancestral (DDPM Algorithm 2)" if sampler.sampler == "ancestral" else
                         f"ddim (Song et al. 2021), eta {sampler.eta:g}",
            "sampler": sampler.sampler,
            "eta": sampler.eta,
            "steps": K,
            "respaced": K != cfg.T,
            "timesteps": process.timesteps.tolist() if K != cfg.T else "all",
            "clip": sampler.clip,
            "precision": network.precision,
            "noise": "counter_normal(seed, [sample number, network index or T, purpose]); purpose 0 = x_T, 1 = z",
            "to_uint8": "round((x + 1) * 127.5) clipped to 0..255",
        },
        extra=extra,
    ), plan, done)


def shard_batches(shard: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The batches a shard's samples are drawn in: consecutive runs of `batch_size` from its first sample.
    A batch never spans two shards, so which samples share a network call (which can move the float32
    rounding of the network) depends on the shard and batch sizes only, never on processes or restarts."""
    return [shard[b: b + batch_size] for b in range(0, len(shard), batch_size)]


def _write_progressive(out_dir: Path, work: _Sampling) -> np.ndarray:
    """progressive.npz (`x0_pred` uint8 (rows, P, H, W, C), `t` (P,), `index`, `every`) and its grid PNG:
    one row per sample, one column per recorded x_0 prediction, t = T on the left."""
    path, every, rows = out_dir / PROGRESSIVE_NPZ, work.job.progressive_every, work.rows
    if len(work.progressive) < rows and progressive_is_whole(path, every, rows) and _as_recorded(out_dir):
        with np.load(path, allow_pickle=False) as z:
            return z["x0_pred"]
    x0_pred = work.progressive_array()  # (rows, P, H, W, C)
    atomic_write_npz(path, x0_pred=x0_pred, t=work.progressive_t.numpy(), index=np.arange(rows, dtype=np.int64),
                     every=np.int64(every))
    P = x0_pred.shape[1]
    write_png(out_dir / PROGRESSIVE_PNG, image_grid(x0_pred.reshape(rows * P, *x0_pred.shape[2:]), ncols=P))
    return x0_pred


def _as_recorded(out_dir: Path) -> bool:
    """The progressive files are there and hold what the manifest recorded when they were written."""
    try:
        recorded = SampleManifest.read(out_dir).files
        names = {PROGRESSIVE_NPZ, PROGRESSIVE_PNG}
        if not names <= set(recorded):
            return False
        verify_files(out_dir, {n: recorded[n] for n in names}, SampleManifest.FILE)
        return True
    except OutputFileError:
        return False


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="sample", disable=not enabled or total == 0, file=sys.stderr)


def _dry_run(net: Network, shape, num: int, batch: int, K: int, seed: int) -> DryRun:
    """The number of network evaluations and an ETA from one batch at one timestep (median of 3)."""
    dev, T = net.device, net.diffusion.T
    x = torch.zeros((batch, *shape), dtype=torch.float32, device=dev)
    i = torch.full((batch,), T - 1, dtype=torch.int64, device=dev)
    idx = torch.arange(batch, dtype=torch.int64, device=dev)
    with torch.inference_mode():
        per_step = timed(lambda: (net(x, i), sample_noise(seed, idx, T - 1, PURPOSE_STEP, shape)), dev)
    batches = math.ceil(num / batch)
    eta = per_step * batches * K
    line = (f"dry run: {num} samples x {K} steps = {num * K} network evaluations "
            f"({batches} batches of up to {batch} on {dev}); one batch at one timestep took {per_step:.4f} s "
            f"-> ETA {eta:.0f} s ({eta / 3600:.2f} h)")
    return DryRun(COMMAND, str(dev), (DryRunStage(COMMAND, f"{num} samples x {K} steps", num * K, eta),), (line,))
