"""`ddpm-bench reproduce`: the paper's pipeline for one recipe, end to end and resumable.

Stages, each skipped when its output is already complete (each stage's own resume rules apply):
  train (or --ckpt) -> sample -> nll on train and test -> gap -> rate-distortion -> FID/IS -> report
RUN_DIR layout: config.json, log.csv, checkpoints/ (train), samples/, nll_train/, nll_test/, gap.json,
rate_distortion/, fid/, report/, reproduce.json (what ran, with timings).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ddpm_bench.config import load_recipe
from ddpm_bench.errors import UserError
from ddpm_bench.provenance import environment
from ddpm_bench.shards import atomic_write_json, read_json

STAGES = ("train", "sample", "nll_train", "nll_test", "gap", "rate_distortion", "fid", "report")


def _say(msg: str) -> None:
    print(f"[reproduce] {msg}", file=sys.stderr, flush=True)


def final_checkpoint(run: Path) -> Path:
    from ddpm_bench.jobs.train import list_checkpoints

    ckpts = list_checkpoints(run)
    if not ckpts:
        raise UserError(f"{run}: training left no checkpoint")
    return ckpts[-1]


def run_reproduce(recipe: str, overrides: list[str], out: str, ckpt: str | None = None, device: str = "auto",
                  data_root: str | None = None, force: bool = False, dry: bool = False, progress: bool = True) -> dict:
    from ddpm_bench.jobs.fid import run_fid
    from ddpm_bench.jobs.gap import compute_gap
    from ddpm_bench.jobs.nll import run_nll
    from ddpm_bench.jobs.rate_distortion import run_rate_distortion
    from ddpm_bench.jobs.report import build_report
    from ddpm_bench.jobs.sample import run_sample
    from ddpm_bench.jobs.train import run_train

    cfg = load_recipe(recipe, overrides)
    ev = cfg.evaluation
    if dry:
        from ddpm_bench.jobs.reproduce_eta import print_eta
        from ddpm_bench.precision import resolve_device

        print_eta(cfg, ckpt, resolve_device(device), data_root)
        return {}
    run = Path(out)
    record_path = run / "reproduce.json"
    timings: dict[str, float] = {}

    def stage(name: str, fn) -> None:
        t0 = time.perf_counter()
        _say(f"{name} ...")
        fn()
        timings[name] = round(time.perf_counter() - t0, 1)
        _say(f"{name} done in {timings[name]:.1f} s")

    if ckpt is None:
        stage("train", lambda: run_train(recipe, overrides, out=str(run), device=device, force=force,
                                         progress=progress))
        model_ckpt = str(final_checkpoint(run))
    else:
        if force and run.exists():
            import shutil

            shutil.rmtree(run)
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run / "config.json", cfg.to_dict())
        model_ckpt = ckpt
    _say(f"model: {model_ckpt}")
    common = dict(ckpt=model_ckpt, model=None, weights="ema", diffusion_flags={}, device=device, precision=ev.precision)
    stage("sample", lambda: run_sample(**common, num=ev.num_samples, batch_size=ev.sample_batch_size, seed=ev.seed,
                                       steps=ev.sample_steps or None, progressive_every=ev.progressive_every,
                                       out=str(run / "samples"), progress=progress))
    nll_common = dict(common, data_root=data_root, batch_size=ev.nll_batch_size, seed=ev.seed, draws=ev.draws,
                      clip=True, decoder_cdf="exact", shard_size=64, progress=progress)
    stage("nll_train", lambda: run_nll(**nll_common, data=cfg.training.data, num_images=ev.nll_train_images or None,
                                       out=str(run / "nll_train"), force=False))
    stage("nll_test", lambda: run_nll(**nll_common, data=ev.test_data, num_images=ev.nll_test_images or None,
                                      out=str(run / "nll_test"), force=False))

    def gap() -> None:
        result = compute_gap(run / "nll_train", run / "nll_test", ev.max_gap)
        atomic_write_json(run / "gap.json", result)
        _say(f"gap {result['gap_bpd']:+.4f} bits/dim, 95% interval [{result['ci95'][0]:+.4f}, {result['ci95'][1]:+.4f}]"
             + (f" exceeds --max-gap {ev.max_gap}" if result["exceeds"] else ""))

    stage("gap", gap)
    stage("rate_distortion", lambda: run_rate_distortion(out=run / "rate_distortion", nll_dir=run / "nll_test",
                                                         force=True))
    fid_dir = run / "fid"
    if (fid_dir / "metrics.json").exists():
        _say("fid: already complete")
    else:
        stage("fid", lambda: run_fid(samples=str(run / "samples"), ref=ev.fid_ref or cfg.training.data,
                                     data_root=data_root, backend=ev.fid_backend, feature_extractor=ev.feature_extractor,
                                     device=device, out=str(fid_dir), force=False, progress=progress,
                                     allow_few_samples=ev.fid_allow_few_samples))
    stage("report", lambda: build_report([run], run / "report", force=True))
    record = {"recipe": str(recipe), "overrides": list(overrides), "checkpoint": model_ckpt, "stages": STAGES,
              "seconds": timings, "environment": environment()}
    if record_path.exists():
        old = read_json(record_path)
        record["seconds"] = {**old.get("seconds", {}), **timings}
    atomic_write_json(record_path, record)
    _say(f"report: {run / 'report' / 'report.md'}")
    return record
