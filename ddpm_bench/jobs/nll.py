"""`ddpm-bench nll` and `ddpm_bench.bound`: a likelihood estimator over a data set, in resumable shards.

One lifecycle for every estimator (ddpm_bench/estimators): load the network and the images, let the
estimator say what of its inputs is part of the run's identity, claim `--out` (ddpm_bench.run_dir), let it
set up (a pilot), compute the missing shards (rank r of a torchrun launch takes the shards s with
s % world == r), merge them, and write the typed outputs. Without `--out` (the Python API) the same shards
are computed in memory, in the same order and with the same batches, so the same inputs give the same bits.

Layout of --out: `run.json` and `.lock` (the lifecycle), `shards/nll_XXXXXX.npz` (completed shards, each
with the run_id and its image numbers), the estimator's own state (e.g. `proposal.npz`), and at the end
`per_image.npz` (with `terms.csv` for the bound) and `summary.json`, written last.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ddpm_bench import distributed, run_dir
from ddpm_bench.arguments import given, switch
from ddpm_bench.data import DataSpec, ImageSet
from ddpm_bench.dry_run import DryRun, DryRunStage
from ddpm_bench.errors import UserError
from ddpm_bench.estimators import ESTIMATORS, make_estimator
from ddpm_bench.estimators.base import Estimator
from ddpm_bench.fingerprint import run_fingerprint
from ddpm_bench.messages import note, warn
from ddpm_bench.models.formats import load_network
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.network import Execution, Network
from ddpm_bench.outputs import NllOutput, OutputFileError
from ddpm_bench.probe import timed
from ddpm_bench.provenance import environment
from ddpm_bench.run_dir import RunDir, RunOptions, ShardPlan
from ddpm_bench.schedule import prior_warning
from ddpm_bench.variational_bound import bound_pairs, default_pairs_per_call, to_model_scale
from ddpm_bench.version import __version__

COMMAND = "nll"
SHARD_DIR = "shards"
DEFAULT_SHARD_SIZE = 64  # images per shard: the unit of resume and of work per process
LARGE_RUN_EVALS = 10_000_000  # from here on a run prints its cost before it starts


@dataclass(frozen=True)
class NllJob:
    """Everything one `nll` run needs, built once from flags, a recipe's stage or a Python call: the model
    (where it comes from, or a ready Network), the images (a data source, or a ready ImageSet), the
    estimator's options (its type chooses the estimator), how the network runs and how the run is kept."""

    model: ModelSpec | Network
    data: DataSpec | ImageSet
    options: object  # BoundOptions, ImportanceOptions, ... (ddpm_bench.estimators)
    execution: Execution = Execution()
    run: RunOptions = RunOptions()

    @property
    def shard_size(self) -> int:
        return self.run.shard_size or DEFAULT_SHARD_SIZE


def shard_name(s: int) -> str:
    return f"{SHARD_DIR}/nll_{s:06d}.npz"


def load_data(data: DataSpec | ImageSet) -> ImageSet:
    return data if isinstance(data, ImageSet) else data.load()


def check_image_shape(network: Network, data: ImageSet) -> None:
    if network.image_shape is not None and tuple(network.image_shape) != tuple(data.shape):
        raise UserError(f"{given('images', data.source)}: images are (C, H, W) = {data.shape}, but the model expects "
                        f"{tuple(network.image_shape)}")


def nll_identity(network: Network, data: ImageSet, estimator: Estimator, prepared: dict, shard_size: int) -> dict:
    """Everything that changes the numbers: the model, its precision, the images, the estimator and its
    options (and what `prepare` says of its inputs), the shard size (which images share a network call).
    Batch size, device, memory format and compile mode are not part of it."""
    return {"model": network.identity.sha256, "precision": network.precision, "data": data.identity(),
            "estimator": estimator.NAME, "options": estimator.identity(), **prepared, "shard_size": shard_size}


def run_nll(job: NllJob) -> NllOutput | DryRun | None:
    """The estimate of `job`, in one process or in each process of a torchrun launch (ddpm_bench.distributed):
    rank 0 returns the output, or with `job.run.dry_run` what the run would cost (other ranks return None).
    With `job.run.out` None nothing is written and the output lives in memory."""
    estimator = make_estimator(job.options)
    device = job.model.device if isinstance(job.model, Network) else Network.device_of(job.execution)
    with distributed.process_group_or_local(device, local=job.run.out is None):  # in memory: this process's own
        return _run_nll(job, estimator)


def _run_nll(job: NllJob, estimator: Estimator) -> NllOutput | DryRun | None:
    main, run = distributed.is_main(), job.run
    rd = None
    with run_dir.phase():  # every rank: inputs and the estimator's part of the identity; rank 0 claims --out
        network = load_network(job.model, job.execution)
        if main and not network.convention.continuous and (w := prior_warning(network.diffusion.schedule())):
            warn(w)
        images = load_data(job.data)
        check_image_shape(network, images)
        batch_size = run.batch_size or default_pairs_per_call(network.device, images.shape)
        estimator.check(network, images)
        if run.dry_run:
            return dry_run(network, images, estimator, batch_size)
        identity = nll_identity(network, images, estimator, estimator.prepare(network, images), job.shard_size)
        evals, what = estimator.cost(len(images), network.diffusion.T)
        if main and evals >= LARGE_RUN_EVALS:  # a long run says what it will cost before it starts
            note(f"{len(images)} images x {what} = {evals:,} network evaluations; {switch('dry_run')} gives an ETA")
        if run.out is not None:
            rd = run_dir.claim_collective(run.out, COMMAND, identity, force=run.force,
                                          fingerprint=run_fingerprint(network, images.shape) if main else None)
    estimator.setup(network, images, rd, batch_size)
    plan = ShardPlan(len(images), job.shard_size)
    if rd is None:
        parts = [arrays for _, arrays in compute_shards(estimator, network, images, plan, list(range(plan.num_shards)),
                                                        batch_size, run.progress)]
        run_id = run_dir.run_id_of(COMMAND, run_dir.normalise(identity))
    else:
        with run_dir.phase():  # rank 0 decides what is done: a finished run, or the valid shards
            finished = finished_output(rd, plan, estimator) if main else None
            done = distributed.broadcast(finished is not None if main else None)
            missing = [] if done else plan.missing(lambda s: rd.shard_is_valid(shard_name(s), plan.items(s),
                                                                               estimator.SHARD_KEYS))
            if main:
                for s in missing:  # an invalid shard is recomputed, never merged (before any rank writes)
                    (rd.path / shard_name(s)).unlink(missing_ok=True)
        if done:
            return replace(finished, complete_before=True) if main else None
        with run_dir.phase():  # every rank: its own shards
            for s, arrays in compute_shards(estimator, network, images, plan, plan.owned(missing), batch_size,
                                            run.progress and main):
                rd.write_shard(shard_name(s), plan.items(s), **arrays)
        if not main:
            return None
        parts = [rd.read_shard(shard_name(s), plan.items(s), estimator.SHARD_KEYS) for s in range(plan.num_shards)]
        run_id = rd.run_id
    merged = {k: np.concatenate([p[k] for p in parts]) for k in estimator.SHARD_KEYS}
    merged["index"] = images.index.astype(np.int64)
    output = estimator.finish(merged, common_fields(run_id, network, images, estimator, merged, batch_size))
    if rd is not None:
        output.write(rd.path)
        output = estimator.read(rd.path)  # what was written, read back and checked
    return output


def compute_shards(estimator: Estimator, network: Network, images: ImageSet, plan: ShardPlan, shards: list[int],
                   batch_size: int, progress: bool) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(s, arrays) of the listed shards, each computed on its own (so a shard's numbers never depend on the
    others), in order, as each is done (the caller writes it before the next is computed)."""
    from tqdm import tqdm

    T = network.diffusion.T
    total = sum(len(plan.items(s)) for s in shards) * estimator.evaluations_per_image(T)
    with tqdm(total=total, unit=estimator.PROGRESS_UNIT, disable=not progress or total == 0, dynamic_ncols=True,
              desc=estimator.NAME, file=sys.stderr) as bar:
        for s in shards:
            items = plan.items(s)
            lo, hi = int(items[0]), int(items[-1]) + 1
            x = torch.from_numpy(images.images[lo:hi]).permute(0, 3, 1, 2)
            yield s, estimator.compute(network, x, torch.from_numpy(images.index[lo:hi]), batch_size=batch_size,
                                       progress=bar.update)


def common_fields(run_id: str, network: Network, images: ImageSet, estimator: Estimator, merged: dict,
                  batch_size: int) -> dict:
    """The summary fields every estimator shares."""
    c, h, w = images.shape
    n, T = len(images), 0 if network.convention.continuous else network.diffusion.T  # 0: continuous time
    return {
        "run_id": run_id, "estimator": estimator.NAME, "quantity": estimator.QUANTITY, "n_images": n,
        "dims": c * h * w, "T": T, "data": images.source, "data_sha256": images.sha256,
        "seed": estimator.options.seed, "precision": network.precision,
        "mean_type": network.diffusion.mean_type, "var_type": network.diffusion.var_type,
        "model": network.describe(), "diffusion": asdict(network.diffusion), "ddpm_bench_version": __version__,
        "seconds": float(merged["seconds"].sum()) + estimator.setup_seconds(),
        "network_evals": estimator.network_evals(merged, T),
        "extra": {"data_notes": list(images.notes), "processes": distributed.world_size(), "batch_size": batch_size,
                  "network_execution": network.describe_execution(), "environment": environment()},
    }


def finished_output(rd: RunDir, plan: ShardPlan, estimator: Estimator) -> NllOutput | None:
    """The output of a finished run in `rd`: its files present, whole and of this run, and every shard still
    whole and of this run; None otherwise (the outputs are then merged again from the checked shards,
    computing the ones that are not)."""
    if not (rd.path / estimator.SUMMARY.FILE).exists():
        return None
    try:
        output = estimator.read(rd.path)
    except OutputFileError as e:
        note(f"{e}; merging the shards again")
        return None
    if output.summary.run_id != rd.run_id:
        return None
    if not all(rd.shard_is_valid(shard_name(s), plan.items(s), estimator.SHARD_KEYS, say=False)
               for s in range(plan.num_shards)):
        return None
    return output


def probe_seconds_per_eval(network: Network, data: ImageSet, batch_size: int, repeats: int = 3) -> float:
    """Seconds per network evaluation of the bound engine's step (noise, network, float64 terms) on one full
    batch of (image, term) pairs spread over all terms: the median of `repeats` timed calls after a warm-up
    call (which also absorbs one-off costs such as torch.compile)."""
    device = network.device
    s = network.diffusion.schedule().to(device)
    T = network.diffusion.T
    m = min(len(data), batch_size)
    x0_all = to_model_scale(torch.from_numpy(data.images[:m]).permute(0, 3, 1, 2).to(device))
    index = torch.from_numpy(data.index[:m]).to(device)
    flat = torch.arange(batch_size, device=device)
    n, k, d = flat % m, (flat * 7919) % T, torch.zeros_like(flat)  # pairs spread over images and terms
    return timed(lambda: bound_pairs(network, s, x0_all, index, n, d, k), device, repeats) / batch_size


def dry_run(network: Network, images: ImageSet, estimator: Estimator, batch_size: int) -> DryRun | None:
    """The network evaluations of this estimate and of the other bound estimators, with ETAs from a timed
    probe of the engine's step (rank 0; None on the others)."""
    if not distributed.is_main():
        return None
    world = distributed.world_size()
    procs = f" in {world} processes" if world > 1 else ""
    N, T = len(images), network.diffusion.T
    evals, what = estimator.cost(N, T)
    per_image = estimator.probe_cost(network, images, batch_size)
    if per_image is not None:  # an estimate whose cost only a probe of itself can tell
        eta = N * per_image / world
        line = (f"{COMMAND}: {N} images x {what} = {evals} network evaluations; ~{per_image:.3g} s per image on "
                f"{network.device} (a solve of the first images) -> ETA {eta / 60:.1f} min{procs}")
        return DryRun(COMMAND, str(network.device), (DryRunStage(estimator.NAME, what, evals, eta),), (line,))
    sec = probe_seconds_per_eval(network, images, batch_size)
    stage = DryRunStage(estimator.NAME, what, evals, evals * sec / world)
    lines = [f"{COMMAND}: {N} images x {what} = {evals} network evaluations; ~{sec * 1e3:.3g} ms each on "
             f"{network.device} (noise, network and terms, batches of {batch_size}) -> ETA "
             f"{stage.seconds / 60:.1f} min{procs}"]
    alternatives = []
    for cls in ESTIMATORS.values():
        other = cls.alternative(T) if cls.QUANTITY == estimator.QUANTITY and cls is not type(estimator) else None
        if other is not None:
            evals, what = other.cost(N, T)
            alternatives.append(DryRunStage(other.label(), what, evals, evals * sec / world))
            lines.append(f"{COMMAND}: {other.label()} would be {evals} network evaluations -> ETA "
                         f"{evals * sec / world / 60:.1f} min{procs}")
    return DryRun(COMMAND, str(network.device), (stage,), tuple(lines), tuple(alternatives))
