"""`ddpm-bench nll`: the exact bound of a model on a data set, in resumable shards.

Layout of --out: `run.json` and `.lock` (ddpm_bench.run_dir), `shards/nll_XXXXXX.npz` (completed shards,
atomic, each with the run_id and its image numbers), and at the end `per_image.npz`, `terms.csv` and
`summary.json` (ddpm_bench.outputs; the summary is written last and marks a finished run once it and
per_image.npz read back whole and of this run).
"""

from __future__ import annotations

import io
import math
import sys
import time
from dataclasses import asdict, replace
from functools import partial

import numpy as np
import torch

from ddpm_bench import __version__, distributed, network_speed, run_dir
from ddpm_bench.bound import (
    BoundOptions,
    bound_pairs,
    compute_bound,
    default_pairs_per_call,
    estimate_bound,
    term_proposal,
    to_model_scale,
)
from ddpm_bench.data import DataSpec, ImageSet
from ddpm_bench.errors import UserError
from ddpm_bench.identity import sha256_json
from ddpm_bench.models.source import ModelSource, ModelSpec
from ddpm_bench.outputs import NllOutput, NllSummary, OutputFileError, PerImage
from ddpm_bench.precision import resolve_device
from ddpm_bench.probe import timed
from ddpm_bench.provenance import environment
from ddpm_bench.run_dir import RunDir, RunOptions, ShardPlan
from ddpm_bench.schedule import prior_warning
from ddpm_bench.shards import atomic_write_bytes

COMMAND = "nll"
TERMS_CSV = NllSummary.TERMS_CSV
SHARD_DIR = "shards"
SHARD_KEYS = ("terms", "mse", "seconds")  # and "drawn" for `--terms K` (shard_keys)
PILOT_IMAGES = 4  # images of the exact pilot that sets the proposal of `--terms K` without `--proposal`
PROPOSAL_FILE = "proposal.npz"  # the pilot's q, kept for a resume


def shard_keys(opts: BoundOptions) -> tuple[str, ...]:
    return (*SHARD_KEYS, "drawn") if opts.terms else SHARD_KEYS


def shard_name(s: int) -> str:
    return f"{SHARD_DIR}/nll_{s:06d}.npz"


def check_image_shape(source: ModelSource, data: ImageSet) -> None:
    if source.image_shape is not None and tuple(source.image_shape) != tuple(data.shape):
        raise UserError(f"--data {data.source}: images are (C, H, W) = {data.shape}, but the model expects "
                        f"{tuple(source.image_shape)}")


def nll_identity(source: ModelSource, data: ImageSet, opts: BoundOptions, shard_size: int,
                 proposal: dict | None = None) -> dict:
    """Everything that changes the numbers: the model, the images, the bound options, the shard size
    (which images share a network call) and, for `--terms K`, where the proposal comes from. Batch size,
    device and compile mode are not part of it."""
    identity = {"model": source.identity.sha256, "data": data.identity(), "bound": asdict(opts),
                "shard_size": shard_size}
    if proposal is not None:
        identity["proposal"] = {k: v for k, v in proposal.items() if k != "network_evals"}
    return identity


def proposal_source(source: ModelSource, data: ImageSet, opts: BoundOptions,
                    proposal_dir: str | None) -> tuple[dict, NllOutput | None]:
    """Where q of `--terms K` comes from, as part of the run's identity: an exact nll output of the same
    model (`--proposal`, by its run id), else an exact pilot on the first PILOT_IMAGES images (q is then a
    pure function of the model, the images and the seed, all in the identity already)."""
    T = source.diffusion.T
    if proposal_dir is None:
        n = min(PILOT_IMAGES, len(data))
        return {"from": "pilot", "images": data.index[:n].tolist(), "seed": opts.seed, "network_evals": n * T}, None
    prior = NllOutput.read(proposal_dir)
    if prior.summary.model_sha256 != source.identity.sha256:
        raise UserError(f"--proposal {proposal_dir}: computed with another model "
                        f"({prior.summary.model_sha256[:12]}, not {source.identity.sha256[:12]})")
    if prior.summary.T != T or not prior.per_image.exact:
        raise UserError(f"--proposal {proposal_dir}: needs an exact nll output (every term) with T = {T}")
    return {"from": "nll output", "run_id": prior.summary.run_id, "n_images": prior.summary.n_images,
            "network_evals": 0}, prior


def pilot_proposal(source: ModelSource, data: ImageSet, opts: BoundOptions, batch_size: int,
                   device: torch.device) -> np.ndarray:
    """q from the exact bound of the first PILOT_IMAGES images."""
    n = min(PILOT_IMAGES, len(data))
    images = torch.from_numpy(data.images[:n]).permute(0, 3, 1, 2).to(device)
    pilot = compute_bound(source.net, source.diffusion, source.diffusion.schedule(), images,
                          torch.from_numpy(data.index[:n]), replace(opts, terms=0), batch_size=batch_size)
    return term_proposal(pilot.terms.cpu().numpy())


def proposal_of_run(rd: RunDir, source: ModelSource, data: ImageSet, opts: BoundOptions, prior: NllOutput | None,
                    batch_size: int, device: torch.device) -> np.ndarray:
    """q of this run, the same bytes on every rank: from the --proposal output, else the pilot's, kept in
    OUT/proposal.npz (items: the KL terms 1..T-1; checked like a shard) so a resume does not run it again.
    Call inside phases: rank 0 writes the file in one, every rank reads it in the next."""
    terms = np.arange(1, source.diffusion.T, dtype=np.int64)
    if prior is not None:
        return term_proposal(prior.per_image.terms)
    with run_dir.phase():
        if distributed.is_main() and not rd.shard_is_valid(PROPOSAL_FILE, terms, ("q",)):
            rd.write_shard(PROPOSAL_FILE, terms, q=pilot_proposal(source, data, opts, batch_size, device))
    with run_dir.phase():
        q = rd.read_shard(PROPOSAL_FILE, terms, ("q",))["q"]
    return q


def evaluate_shards(source: ModelSource, data: ImageSet, rd: RunDir, plan: ShardPlan, shards: list[int],
                    opts: BoundOptions, *, batch_size: int, device: torch.device, progress: bool,
                    memory_format: torch.memory_format = torch.contiguous_format, q: np.ndarray | None = None) -> None:
    """Compute and write the listed shards: every term, or (opts.terms = K) K terms drawn from q."""
    from tqdm import tqdm

    s = source.diffusion.schedule()
    per_image = opts.terms + 1 if opts.terms else source.diffusion.T * opts.draws
    total = sum(len(plan.items(i)) for i in shards) * per_image
    bar = tqdm(total=total, unit="eval", disable=not progress or total == 0, dynamic_ncols=True,
               desc="bound", file=sys.stderr)
    for i in shards:
        items = plan.items(i)
        lo, hi = int(items[0]), int(items[-1]) + 1
        images = torch.from_numpy(data.images[lo:hi]).permute(0, 3, 1, 2).to(device)
        index = torch.from_numpy(data.index[lo:hi])
        t0 = time.perf_counter()
        engine = partial(estimate_bound, q=q) if opts.terms else compute_bound
        result = engine(source.net, source.diffusion, s, images, index, opts, batch_size=batch_size,
                        memory_format=memory_format, progress=bar.update)
        seconds = time.perf_counter() - t0
        drawn = {} if result.drawn is None else {"drawn": result.drawn.cpu().numpy()}
        rd.write_shard(shard_name(i), items, terms=result.terms.cpu().numpy(), mse=result.mse.cpu().numpy(),
                       seconds=np.full(len(items), seconds / len(items)), **drawn)
    bar.close()


def merge_shards(rd: RunDir, plan: ShardPlan, data: ImageSet, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Every shard, each checked to belong to this run and to hold its images, in order."""
    parts = [rd.read_shard(shard_name(i), plan.items(i), keys) for i in range(plan.num_shards)]
    return {"terms": np.concatenate([p["terms"] for p in parts]), "mse": np.concatenate([p["mse"] for p in parts]),
            "drawn": np.concatenate([p["drawn"] for p in parts]) if "drawn" in keys else None,
            "index": data.index.astype(np.int64),
            "seconds": np.float64(sum(float(p["seconds"].sum()) for p in parts))}


def stderr_of_mean(x: np.ndarray) -> float | None:
    """Standard error of the mean over images (None for a single image)."""
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None


def summarise(merged: dict, rd: RunDir, source: ModelSource, data: ImageSet, opts: BoundOptions,
              proposal: dict | None = None) -> NllSummary:
    """The summary; every standard error is over images, so for `--terms K` it includes the term-sampling
    variance (each image's estimate is independent of the others')."""
    terms = merged["terms"]  # (N, T + 1)
    T = terms.shape[1] - 1
    total = terms.sum(1)
    rate = terms[:, 1:].sum(1)
    c, h, w = data.shape
    return NllSummary(
        run_id=rd.run_id,
        total_bpd=float(total.mean()),
        total_bpd_stderr=stderr_of_mean(total),
        prior_bpd=float(terms[:, T].mean()),
        kl_bpd=float(terms[:, 1:T].sum(1).mean()),
        decoder_bpd=float(terms[:, 0].mean()),
        rate_bpd=float(rate.mean()),
        rate_bpd_stderr=stderr_of_mean(rate),
        decoder_bpd_stderr=stderr_of_mean(terms[:, 0]),
        n_images=int(terms.shape[0]),
        dims=c * h * w,
        T=T,
        data=data.source,
        data_sha256=data.sha256,
        seed=opts.seed,
        draws=opts.draws,
        clip=opts.clip,
        decoder_cdf=opts.decoder_cdf,
        mean_type=source.diffusion.mean_type,
        var_type=source.diffusion.var_type,
        precision=opts.precision,
        model=source.describe(),
        bound=asdict(opts),
        diffusion=asdict(source.diffusion),
        ddpm_bench_version=__version__,
        seconds=float(merged["seconds"]),
        network_evals=int(terms.shape[0] * (opts.terms + 1 if opts.terms else T * opts.draws)
                          + (proposal["network_evals"] if proposal else 0)),
        extra={"estimator": opts.estimator, "terms_per_image": opts.terms or None, "proposal": proposal,
               "environment": environment()},
    )


def terms_csv(terms: np.ndarray, mse: np.ndarray, drawn: np.ndarray | None) -> str:
    """term,bpd_mean,bpd_stderr,mse_mean for term = 0..T (mse empty for T). For `--terms K` the means are
    inverse-probability weighted (unbiased for each term's mean) and a term no image drew is blank."""
    buf = io.StringIO()
    buf.write("term,bpd_mean,bpd_stderr,mse_mean\n")
    T = terms.shape[1] - 1
    for k in range(T + 1):
        if drawn is not None and not drawn[:, k].any():
            buf.write(f"{k},,,\n")
            continue
        se = stderr_of_mean(terms[:, k])
        m = f"{np.nanmean(mse[:, k]):.17g}" if k < T else ""
        buf.write(f"{k},{terms[:, k].mean():.17g},{'' if se is None else f'{se:.17g}'},{m}\n")
    return buf.getvalue()


def write_outputs(rd: RunDir, merged: dict, summary: NllSummary) -> None:
    """per_image.npz and terms.csv first, summary.json last (its presence marks a complete run)."""
    PerImage(terms=merged["terms"], mse=merged["mse"], index=merged["index"], run_id=rd.run_id,
             drawn=merged["drawn"]).write(rd.path)
    atomic_write_bytes(rd.path / TERMS_CSV, terms_csv(merged["terms"], merged["mse"], merged["drawn"]).encode())
    summary.write(rd.path)


def finished_summary(rd: RunDir, plan: ShardPlan, keys: tuple[str, ...]) -> NllSummary | None:
    """The summary of a finished run in `rd`: summary.json, per_image.npz and terms.csv present, whole and
    of this run, and every shard still whole and of this run; None otherwise (the outputs are then merged
    again from the checked shards, computing the ones that are not)."""
    if not (rd.path / NllSummary.FILE).exists():
        return None
    try:
        summary = NllSummary.read(rd.path)
        PerImage.read(rd.path, summary)
    except OutputFileError as e:
        print(f"ddpm-bench nll: {e}; merging the shards again", file=sys.stderr)
        return None
    if summary.run_id != rd.run_id or not (rd.path / TERMS_CSV).is_file():
        return None
    if not all(rd.shard_is_valid(shard_name(i), plan.items(i), keys, say=False)
               for i in range(plan.num_shards)):
        return None
    return summary


def probe_seconds_per_eval(source: ModelSource, data: ImageSet, batch_size: int, precision: str,
                           device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                           repeats: int = 3) -> float:
    """Seconds per network evaluation of the real engine step (noise, network, float64 terms) on one full
    batch of (image, term) pairs spread over all terms: the median of `repeats` timed calls after a
    warm-up call (which also absorbs one-off costs such as torch.compile)."""
    s = source.diffusion.schedule().to(device)
    T = source.diffusion.T
    m = min(len(data), batch_size)
    x0_all = to_model_scale(torch.from_numpy(data.images[:m]).permute(0, 3, 1, 2).to(device))
    index = torch.from_numpy(data.index[:m]).to(device)
    flat = torch.arange(batch_size, device=device)
    n, k, d = flat % m, (flat * 7919) % T, torch.zeros_like(flat)  # pairs spread over images and terms
    return timed(lambda: bound_pairs(source.net, source.diffusion, s, x0_all, index, n, d, k, precision=precision,
                                     memory_format=memory_format), device, repeats) / batch_size


def run_nll(model: ModelSpec, data: DataSpec, opts: BoundOptions, run: RunOptions, shard_size: int = 64,
            proposal: str | None = None) -> NllSummary | None:
    """The nll command, in one process or in each process of a torchrun launch (see ddpm_bench.distributed):
    rank r computes the shards s with s % world == r; rank 0 claims --out, merges and writes the results
    and returns the summary (other ranks return None). With `opts.terms` = K the bound is importance
    sampled from the proposal of `proposal` (an exact nll output of the same model) or of a pilot."""
    if shard_size < 1:
        raise UserError(f"--shard-size must be at least 1, got {shard_size}")
    if proposal is not None and not opts.terms:
        raise UserError("--proposal goes with --terms K (the importance-sampled bound)")
    dev = distributed.process_device(resolve_device(run.device))
    with distributed.process_group(dev):
        return _run_nll(model, data, opts, run, shard_size, proposal, dev)


def _run_nll(model: ModelSpec, data: DataSpec, opts: BoundOptions, run: RunOptions, shard_size: int,
             proposal_dir: str | None, dev: torch.device) -> NllSummary | None:
    main, world = distributed.is_main(), distributed.world_size()
    batch_from = "--batch-size" if run.batch_size is not None else f"default for {dev.type} (bound.PAIRS_PER_CALL)"
    q = proposal = prior = None
    with run_dir.phase():  # every rank: inputs and where the proposal comes from; rank 0 claims --out
        source = model.load(dev)
        if main and (w := prior_warning(source.diffusion.schedule())):
            print(f"ddpm-bench {COMMAND}: warning: {w}", file=sys.stderr)
        images = data.load()
        check_image_shape(source, images)
        run = replace(run, batch_size=run.batch_size or default_pairs_per_call(dev, images.shape))
        channels_last = network_speed.choose_channels_last(source, run.channels_last, dev, images.shape)
        memory_format = network_speed.speed_up(source, channels_last, run.compile_mode)
        if opts.terms and not run.dry_run:
            if opts.terms > source.diffusion.T - 1:
                raise UserError(f"--terms {opts.terms}: more than the T - 1 = {source.diffusion.T - 1} KL terms; "
                                "leave --terms out for every term")
            proposal, prior = proposal_source(source, images, opts, proposal_dir)
        identity = nll_identity(source, images, opts, shard_size, proposal)
        if not run.dry_run:
            rd = run_dir.claim_collective(run.out, COMMAND, identity, force=run.force)
    if proposal is not None:
        q = proposal_of_run(rd, source, images, opts, prior, run.batch_size, dev)
        proposal.update(sha256=sha256_json(q.tolist()), rule="rms of the exact terms over images, 5% uniform")

    T = source.diffusion.T
    per_image = opts.terms + 1 if opts.terms else T * opts.draws
    evals = len(images) * per_image
    if run.dry_run:
        if main:
            sec = probe_seconds_per_eval(source, images, run.batch_size, opts.precision, dev, memory_format)
            procs = f" in {world} processes" if world > 1 else ""
            what = f"(1 + {opts.terms} drawn) terms" if opts.terms else f"{T} terms x {opts.draws} draw(s)"
            if opts.terms and proposal_dir is None:
                evals += min(PILOT_IMAGES, len(images)) * T
                what += f" + a pilot of {min(PILOT_IMAGES, len(images))} images x {T} terms"
            print(f"nll: {len(images)} images x {what} = {evals} network evaluations; "
                  f"~{sec * 1e3:.3g} ms each on {dev} (noise, network and terms, batches of {run.batch_size}) "
                  f"-> ETA {evals * sec / world / 60:.1f} min{procs}")
            K = min(25, T - 1)  # the other estimator, for comparison: exact, or --terms 25 with a pilot
            other, label = (len(images) * T, "the exact bound (without --terms)") if opts.terms else \
                (len(images) * (K + 1) + min(PILOT_IMAGES, len(images)) * T, f"--terms {K} (pilot included)")
            print(f"nll: {label} would be {other} network evaluations -> ETA {other * sec / world / 60:.1f} min{procs}")
        return None

    plan = ShardPlan(len(images), shard_size)
    with run_dir.phase():  # rank 0 decides what is done: a finished run, or the valid shards
        keys = shard_keys(opts)
        finished = finished_summary(rd, plan, keys) if main else None
        done = distributed.broadcast(finished is not None if main else None)
        missing = [] if done else plan.missing(lambda i: rd.shard_is_valid(shard_name(i), plan.items(i), keys))
        if main:
            for i in missing:  # an invalid shard is recomputed, never merged (before any rank writes)
                (rd.path / shard_name(i)).unlink(missing_ok=True)
    if done:
        if main:
            print(f"nll: {rd.path} is already complete", file=sys.stderr)
        return finished

    with run_dir.phase():  # every rank: its own shards
        evaluate_shards(source, images, rd, plan, plan.owned(missing), opts, batch_size=run.batch_size, device=dev,
                        progress=run.progress and main, memory_format=memory_format, q=q)
    if not main:
        return None
    merged = merge_shards(rd, plan, images, keys)  # rank 0: merge (every shard checked again) and write
    summary = summarise(merged, rd, source, images, opts, proposal)
    summary.extra.update(processes=world, batch_size=run.batch_size, batch_size_from=batch_from,
                         network_execution=network_speed.describe(channels_last, run.compile_mode, dev,
                                                                  asked=run.channels_last))
    write_outputs(rd, merged, summary)
    print_summary(summary)
    return summary


def print_summary(s: NllSummary) -> None:
    se = s.total_bpd_stderr
    print(f"{s.data}: {s.n_images} images, T={s.T}, draws={s.draws}, model {s.model_sha256[:12]}")
    print(f"  total bound   {s.total_bpd:.5f} bits/dim" + (f" +- {se:.5f}" if se is not None else ""))
    print(f"  L_T (prior)   {s.prior_bpd:.3e}")
    print(f"  L_1..L_T-1    {s.kl_bpd:.5f}")
    print(f"  L_0 (decoder) {s.decoder_bpd:.5f}")
    print(f"  rate L_1..L_T {s.rate_bpd:.5f}")
    print(f"  {s.network_evals} network evaluations in {s.seconds:.1f} s")
