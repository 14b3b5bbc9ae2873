"""`ddpm-bench nll`: the exact bound of a model on a data set, in resumable shards.

Layout of --out: `run.json` (settings), `shards/nll_XXXXXX.npz` (completed shards, atomic), and at the
end `per_image.npz`, `terms.csv` and `summary.json` (written last: its presence marks a finished run).
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

from ddpm_bench import __version__, distributed, network_speed
from ddpm_bench.bound import bound_pairs, compute_bound, to_model_scale
from ddpm_bench.data import ImageSet, load_images
from ddpm_bench.errors import UserError
from ddpm_bench.models.source import ModelSource, load_model_source
from ddpm_bench.precision import resolve_device
from ddpm_bench.probe import timed
from ddpm_bench.provenance import environment
from ddpm_bench.shards import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npz,
    prepare_run_dir,
    read_json,
)

SUMMARY, TERMS_CSV, PER_IMAGE = "summary.json", "terms.csv", "per_image.npz"
SHARD_DIR = "shards"


def shard_path(out: Path, s: int) -> Path:
    return out / SHARD_DIR / f"nll_{s:06d}.npz"


def check_image_shape(source: ModelSource, data: ImageSet) -> None:
    if source.image_shape is not None and tuple(source.image_shape) != tuple(data.shape):
        raise UserError(f"--data {data.source}: images are (C, H, W) = {data.shape}, but the model expects "
                        f"{tuple(source.image_shape)}")


def nll_settings(source: ModelSource, data: ImageSet, seed: int, draws: int, clip: bool, decoder_cdf: str,
                 precision: str, shard_size: int) -> dict:
    """Everything that changes the numbers (batch size and device do not, so they may change on resume)."""
    return {"model": source.provenance, "diffusion": asdict(source.diffusion), "data": data.source,
            "data_sha256": data.sha256, "n_images": len(data), "seed": seed, "draws": draws, "clip": clip,
            "decoder_cdf": decoder_cdf, "precision": precision, "shard_size": shard_size}


def evaluate_shards(source: ModelSource, data: ImageSet, out: Path, shards: list[int], *, seed: int, draws: int,
                    clip: bool, decoder_cdf: str, batch_size: int, precision: str, shard_size: int,
                    device: torch.device, progress: bool,
                    memory_format: torch.memory_format = torch.contiguous_format) -> None:
    """Compute and write each listed shard that is not already complete."""
    from tqdm import tqdm

    s = source.diffusion.schedule()
    todo = [i for i in shards if not shard_path(out, i).exists()]
    per_image = source.diffusion.T * draws
    total = sum(min(shard_size, len(data) - i * shard_size) for i in todo) * per_image
    bar = tqdm(total=total, unit="eval", disable=not progress or total == 0, dynamic_ncols=True,
               desc="bound", file=sys.stderr)
    for i in todo:
        lo, hi = i * shard_size, min((i + 1) * shard_size, len(data))
        images = torch.from_numpy(data.images[lo:hi]).permute(0, 3, 1, 2).to(device)
        index = torch.from_numpy(data.index[lo:hi])
        t0 = time.perf_counter()
        result = compute_bound(source.net, source.diffusion, s, images, index, seed=seed, draws=draws, clip=clip,
                               decoder_cdf=decoder_cdf, batch_size=batch_size, precision=precision,
                               memory_format=memory_format, progress=bar.update)
        seconds = time.perf_counter() - t0
        atomic_write_npz(shard_path(out, i), terms=result.terms.cpu().numpy(), mse=result.mse.cpu().numpy(),
                         index=data.index[lo:hi], seconds=np.float64(seconds))
    bar.close()


def merge_shards(out: Path, n_shards: int) -> dict[str, np.ndarray]:
    parts = []
    for i in range(n_shards):
        with np.load(shard_path(out, i)) as f:
            parts.append({k: f[k] for k in f.files})
    return {"terms": np.concatenate([p["terms"] for p in parts]), "mse": np.concatenate([p["mse"] for p in parts]),
            "index": np.concatenate([p["index"] for p in parts]),
            "seconds": np.float64(sum(float(p["seconds"]) for p in parts))}


def stderr_of_mean(x: np.ndarray) -> float | None:
    """Standard error of the mean over images (None for a single image)."""
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None


def summarise(merged: dict, settings: dict, source: ModelSource, dims: int) -> dict:
    terms = merged["terms"]  # (N, T + 1)
    T = terms.shape[1] - 1
    total = terms.sum(1)
    rate = terms[:, 1:].sum(1)
    return {
        "total_bpd": float(total.mean()),
        "total_bpd_stderr": stderr_of_mean(total),
        "prior_bpd": float(terms[:, T].mean()),
        "kl_bpd": float(terms[:, 1:T].sum(1).mean()),
        "decoder_bpd": float(terms[:, 0].mean()),
        "rate_bpd": float(rate.mean()),
        "rate_bpd_stderr": stderr_of_mean(rate),
        "decoder_bpd_stderr": stderr_of_mean(terms[:, 0]),
        "n_images": int(terms.shape[0]),
        "dims": dims,
        "T": T,
        "data": settings["data"],
        "data_sha256": settings["data_sha256"],
        "seed": settings["seed"],
        "draws": settings["draws"],
        "clip": settings["clip"],
        "decoder_cdf": settings["decoder_cdf"],
        "mean_type": source.diffusion.mean_type,
        "var_type": source.diffusion.var_type,
        "diffusion": settings["diffusion"],
        "precision": settings["precision"],
        "model": source.provenance,
        "ddpm_bench_version": __version__,
        "seconds": float(merged["seconds"]),
        "network_evals": int(terms.shape[0] * T * settings["draws"]),
        "environment": environment(),
    }


def terms_csv(terms: np.ndarray, mse: np.ndarray) -> str:
    """term,bpd_mean,bpd_stderr,mse_mean for term = 0..T (mse empty for T)."""
    buf = io.StringIO()
    buf.write("term,bpd_mean,bpd_stderr,mse_mean\n")
    T = terms.shape[1] - 1
    for k in range(T + 1):
        se = stderr_of_mean(terms[:, k])
        m = f"{mse[:, k].mean():.17g}" if k < T else ""
        buf.write(f"{k},{terms[:, k].mean():.17g},{'' if se is None else f'{se:.17g}'},{m}\n")
    return buf.getvalue()


def write_outputs(out: Path, merged: dict, summary: dict) -> None:
    """per_image.npz and terms.csv first, summary.json last (its presence marks a complete run)."""
    atomic_write_npz(out / PER_IMAGE, terms=merged["terms"], mse=merged["mse"], index=merged["index"].astype(np.int64))
    atomic_write_bytes(out / TERMS_CSV, terms_csv(merged["terms"], merged["mse"]).encode())
    atomic_write_json(out / SUMMARY, summary)


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


def clean_stale_temporaries(out: Path) -> None:
    """Remove temporary files of writes a killed run left behind (never taken for complete files)."""
    for tmp in (out / SHARD_DIR).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def run_nll(*, ckpt: str | None, model: str | None, weights: str, diffusion_flags: dict, data: str,
            data_root: str | None, num_images: int | None, batch_size: int, seed: int, draws: int, clip: bool,
            decoder_cdf: str, device: str, precision: str, shard_size: int, out: str, force: bool,
            dry_run: bool = False, progress: bool = True, compile_mode: str | None = None,
            channels_last: bool = False) -> dict | None:
    """The nll command, in one process or in each process of a torchrun launch (see ddpm_bench.distributed):
    rank r computes the shards s with s % world == r; rank 0 prepares --out, merges and writes the results
    and returns the summary (other ranks return None)."""
    for flag, value in (("--batch-size", batch_size), ("--draws", draws), ("--shard-size", shard_size)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    dev = distributed.process_device(resolve_device(device))
    with distributed.process_group(dev):
        return _run_nll(ckpt=ckpt, model=model, weights=weights, diffusion_flags=diffusion_flags, data=data,
                        data_root=data_root, num_images=num_images, batch_size=batch_size, seed=seed, draws=draws,
                        clip=clip, decoder_cdf=decoder_cdf, dev=dev, precision=precision, shard_size=shard_size,
                        out=Path(out), force=force, dry_run=dry_run, progress=progress, compile_mode=compile_mode,
                        channels_last=channels_last)


def _run_nll(*, ckpt, model, weights, diffusion_flags, data, data_root, num_images, batch_size, seed, draws, clip,
             decoder_cdf, dev, precision, shard_size, out: Path, force, dry_run, progress, compile_mode,
             channels_last) -> dict | None:
    main, rank, world = distributed.is_main(), distributed.rank(), distributed.world_size()
    error = None
    try:  # phase 1 (every rank): inputs; rank 0 prepares --out
        source = load_model_source(ckpt, model, weights, diffusion_flags, dev)
        images = load_images(data, data_root, num_images)
        check_image_shape(source, images)
        memory_format = network_speed.speed_up(source, channels_last, compile_mode)
        settings = nll_settings(source, images, seed, draws, clip, decoder_cdf, precision, shard_size)
        if main and not dry_run:
            prepare_run_dir(out, settings, force=force, command="nll")
            clean_stale_temporaries(out)
    except Exception as e:
        error = e
    distributed.agree(error)

    T = source.diffusion.T
    evals = len(images) * T * draws
    if dry_run:
        if main:
            sec = probe_seconds_per_eval(source, images, batch_size, precision, dev, memory_format)
            procs = f" in {world} processes" if world > 1 else ""
            print(f"nll: {len(images)} images x {T} terms x {draws} draw(s) = {evals} network evaluations; "
                  f"~{sec * 1e3:.3g} ms each on {dev} (noise, network and terms, batches of {batch_size}) "
                  f"-> ETA {evals * sec / world / 60:.1f} min{procs}")
        return None
    if (out / SUMMARY).exists():
        if main:
            print(f"nll: {out} is already complete", file=sys.stderr)
        return read_json(out / SUMMARY) if main else None

    n_shards = math.ceil(len(images) / shard_size)
    mine = [i for i in range(n_shards) if i % world == rank]
    error = None
    try:  # phase 2 (every rank): its own shards
        evaluate_shards(source, images, out, mine, seed=seed, draws=draws, clip=clip, decoder_cdf=decoder_cdf,
                        batch_size=batch_size, precision=precision, shard_size=shard_size, device=dev,
                        progress=progress and main, memory_format=memory_format)
    except Exception as e:
        error = e
    distributed.agree(error)
    if not main:
        return None
    merged = merge_shards(out, n_shards)  # phase 3 (rank 0): merge and write
    c, h, w = images.shape
    summary = summarise(merged, settings, source, dims=c * h * w)
    summary["processes"] = world
    summary["network_execution"] = network_speed.describe(channels_last, compile_mode, dev)
    write_outputs(out, merged, summary)
    print_summary(summary)
    return summary


def print_summary(summary: dict) -> None:
    se = summary["total_bpd_stderr"]
    print(f"{summary['data']}: {summary['n_images']} images, T={summary['T']}, draws={summary['draws']}")
    print(f"  total bound   {summary['total_bpd']:.5f} bits/dim" + (f" +- {se:.5f}" if se is not None else ""))
    print(f"  L_T (prior)   {summary['prior_bpd']:.3e}")
    print(f"  L_1..L_T-1    {summary['kl_bpd']:.5f}")
    print(f"  L_0 (decoder) {summary['decoder_bpd']:.5f}")
    print(f"  rate L_1..L_T {summary['rate_bpd']:.5f}")
    print(f"  {summary['network_evals']} network evaluations in {summary['seconds']:.1f} s")
