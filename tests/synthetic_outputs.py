"""Self-consistent synthetic outputs of `nll`, `sample`, `fid`, `gap` and `reproduce` (the file formats of
SPEC section 2, written through the typed outputs of ddpm_bench.outputs), for the rate-distortion and report
tests. The numbers are random but the files agree with each other exactly: summary.json is computed from
per_image.npz the way the bound engine defines it (means over images), gap.json from both per_image.npz."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ddpm_bench.config import RunConfig, TrainConfig
from ddpm_bench.data_sources import one_distribution
from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.estimators import read_output
from ddpm_bench.identity import model_identity
from ddpm_bench.jobs.gap import gap_statistics
from ddpm_bench.jobs.sample import write_png
from ddpm_bench.outputs import (
    BoundSummary,
    FidMetrics,
    GapResult,
    ImportanceSummary,
    NllOutput,
    PerImage,
    ReproduceLayout,
    SampleManifest,
    gap_verdict_of,
    stderr_of_mean,
)
from ddpm_bench.schedule import make_betas


def per_image_arrays(n: int, T: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """terms (n, T+1) bits/dim, positive, L_k shrinking with k; mse (n, T) growing with t like 1 - abar_t."""
    rng = np.random.default_rng(seed)
    k = np.arange(T + 1)
    scale = np.exp(-6.0 * k / T)  # early terms carry most of the bits, as in the paper's Table 4
    terms = rng.gamma(2.0, 0.5, size=(n, T + 1)) * scale / T
    terms[:, 0] = 1.9 + 0.2 * rng.random(n)  # L_0, the decoder
    terms[:, T] = 1e-5 * rng.random(n)  # L_T, the prior term
    abar = np.cumprod(1.0 - make_betas("linear", T))  # (T,), entry t - 1
    mse = (1.0 - abar)[None, :] * rng.uniform(0.05, 0.4, size=(n, T))
    return terms, mse


def model_entry(weights_sha256: str = "ab" * 32, weights: str = "ema", T: int = 20, mean_type: str = "eps",
                var_type: str = "fixed-large") -> dict:
    """The `model` field of an output: provenance and a model identity (ddpm_bench.identity)."""
    diffusion = DiffusionConfig(T=T, mean_type=mean_type, var_type=var_type)
    ident = model_identity("ckpt", weights, weights_sha256, diffusion, {"ch": 32},
                           "/runs/x/checkpoints/last.pt")
    return {"kind": "ckpt", "path": "/runs/x/checkpoints/last.pt", "sha256": "ef" * 32, "weights": weights,
            "step": 10, "identity": ident.to_dict()}


def write_nll_dir(path: Path, n: int = 6, T: int = 20, seed: int = 0, data: str = "embedded:test",
                  sha256: str = "ab" * 32, weights: str = "ema", mean_type: str = "eps",
                  var_type: str = "fixed-large", terms_per_image: int | None = None,
                  shift_bpd: float = 0.0, quantity: str = "bound") -> Path:
    """An nll output directory: summary.json, terms.csv, per_image.npz (through the typed outputs). With
    `terms_per_image` K, an output of the importance-sampled bound (`nll --terms K`): K of the T - 1 KL
    terms of each image drawn, the others 0 in `terms` and NaN in `mse`. `shift_bpd` is added to every
    image's decoder term (a test split the model fits worse). `quantity` is written as the summary says it
    (a "likelihood" stands for the output of a likelihood estimator that does not exist yet)."""
    path.mkdir(parents=True, exist_ok=True)
    terms, mse = per_image_arrays(n, T, seed)
    terms[:, 0] += shift_bpd
    drawn = None
    if terms_per_image is not None:
        rng = np.random.default_rng(seed + 1000)
        drawn = np.zeros(terms.shape, dtype=np.int64)
        drawn[:, [0, T]] = 1
        for j in range(n):
            drawn[j, 1 + rng.choice(T - 1, size=terms_per_image, replace=False)] = 1
        weight = np.where(np.arange(T + 1) % T == 0, 1.0, (T - 1) / terms_per_image)  # 1/(K q(k)), q uniform
        terms = np.where(drawn > 0, terms * weight, 0.0)
        mse = np.where(drawn[:, :T] > 0, mse, np.nan)
    total = terms.sum(axis=1)
    run_id = hashlib.sha256(f"{path.name}{n}{T}{seed}{data}{sha256}{terms_per_image}".encode()).hexdigest()
    bound = {"seed": seed, "draws": 1, "clip": True, "decoder_cdf": "exact"}
    importance = {} if terms_per_image is None else {
        "estimator": "importance", "terms_per_image": terms_per_image, "proposal": {"from": "uniform"}}
    summary = (BoundSummary if terms_per_image is None else ImportanceSummary)(
        **importance, quantity=quantity,
        run_id=run_id, total_bpd=float(total.mean()), total_bpd_stderr=stderr_of_mean(total),
        prior_bpd=float(terms[:, T].mean()), kl_bpd=float(terms[:, 1:T].sum(axis=1).mean()),
        decoder_bpd=float(terms[:, 0].mean()), rate_bpd=float(terms[:, 1:].sum(axis=1).mean()),
        rate_bpd_stderr=None, decoder_bpd_stderr=None, n_images=n, dims=3 * 8 * 8, T=T, data=data,
        data_sha256=hashlib.sha256(data.encode()).hexdigest(), seed=seed, draws=1, clip=True, decoder_cdf="exact",
        mean_type=mean_type, var_type=var_type, precision="fp32",
        model=model_entry(sha256, weights, T, mean_type, var_type), bound=bound,
        diffusion=asdict(DiffusionConfig(T=T, mean_type=mean_type, var_type=var_type)), ddpm_bench_version="0.1.0",
        seconds=1.0,
        network_evals=n * T)
    per_image = PerImage(terms=terms, mse=mse, index=np.arange(n, dtype=np.int64), run_id=run_id,
                         drawn=np.ones(terms.shape, dtype=np.int64) if drawn is None else drawn)
    NllOutput(None, summary, per_image).write(path)  # as nll writes them: summary.json records its siblings
    return path


def record_again(folder: Path, name: str, summary: str = "summary.json") -> None:
    """Record the file `name` as it is now in the JSON output `summary` beside it (its sha256 in `files`, its
    content hash again): a file that was written so, for the tests of the checks behind the content check."""
    from ddpm_bench.shards import CONTENT, file_sha256, json_sha256

    path = folder / summary
    obj = json.loads(path.read_text())
    obj["files"][name] = file_sha256(folder / name)
    obj[CONTENT] = json_sha256(obj)
    path.write_text(json.dumps(obj, indent=2))


def write_samples_manifest(path: Path, model: dict, num: int = 100, shard_size: int = 50,
                           pngs: bool = False) -> Path:
    """A finished sample directory's manifest.json (no shards: the report reads the manifest only); with
    `pngs`, its grid.png and progressive.png (random pixels)."""
    path.mkdir(parents=True, exist_ok=True)
    if pngs:
        rng = np.random.default_rng(num)
        write_png(path / SampleManifest.GRID, rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8))
        write_png(path / SampleManifest.PROGRESSIVE_PNG,
                  rng.integers(0, 256, size=(10, 40, 3), dtype=np.uint8))
    num_shards = -(-num // shard_size)
    SampleManifest(format=SampleManifest.FORMAT, run_id=hashlib.sha256(f"samples{path}".encode()).hexdigest(),
                   model=model, seed=0, num=num, shard_size=shard_size, num_shards=num_shards, image_shape=[3, 8, 8],
                   count=num, complete=True, shards=list(range(num_shards)), sampler={"steps": None}).write(path)
    return path


def write_fid_dir(path: Path, fid: float = 12.5, is_mean: float | None = 7.1, is_std: float | None = 0.2,
                  ref: str = "embedded:train", n_samples: int = 100, samples_model: dict | None = None,
                  comparable: bool = False, is_reason: str | None = None) -> Path:
    """A fid output's metrics.json; `samples_model` is the samples' manifest model (None: plain images);
    `is_reason`: why is_mean is null, as `fid` writes it."""
    path.mkdir(parents=True, exist_ok=True)
    run_id = hashlib.sha256(f"fid{path.name}{fid}{ref}{n_samples}".encode()).hexdigest()
    FidMetrics(run_id=run_id, fid=fid, is_mean=is_mean, is_std=is_std, n_samples=n_samples, n_ref=200, ref=ref,
               samples=str(path.parent / "samples"), backend="torch-fidelity",
               feature_extractor={"name": "inception-v3-compat", "sha256": "cd" * 32},
               by_backend={"torch-fidelity": {"fid": fid}},
               warnings=[] if comparable else ["fewer than 50,000 samples (100): not comparable to the paper"],
               comparable_to_paper=comparable,
               samples_model=samples_model, is_reason=is_reason).write(path)
    return path


def write_gap(run: Path, max_gap: float = 0.03) -> Path:
    """gap.json of a run directory, from its gap_nll_train/ and gap_nll_test/ when it has them, else from
    nll_train/ and nll_test/ (as `reproduce`; the statistics of ddpm-bench gap)."""
    layout = ReproduceLayout(run)
    gap_dirs = layout.gap_nll_train.is_dir() and layout.gap_nll_test.is_dir()
    train, test = (read_output(layout.gap_nll_train), read_output(layout.gap_nll_test)) if gap_dirs else \
        (read_output(layout.nll_train), read_output(layout.nll_test))
    stats = gap_statistics(train.per_image.terms.sum(1), test.per_image.terms.sum(1))
    verdict = gap_verdict_of(stats["ci95"], max_gap)
    GapResult(**stats, max_gap=max_gap, exceeds=verdict == "above", verdict=verdict,
              splits=one_distribution(train.summary.data, test.summary.data), train=train.summary.data,
              test=test.summary.data, train_run_id=train.summary.run_id, test_run_id=test.summary.run_id,
              model=test.summary.model).write(run)
    return layout.gap


def write_run_dir(path: Path, objective: str = "L_simple", var_type: str = "fixed-large", mean_type: str = "eps",
                  data: str = "embedded:train", T: int = 20, fid: bool = True, fid_ref: str | None = None,
                  fid_value: float = 12.5, sha256: str = "ab" * 32, samples_sha256: str | None = None,
                  paper_protocol: bool = False, gap_images: int | None = None, gap_shift_bpd: float = 0.0,
                  max_gap: float = 0.03, is_reason: str | None = None, sample_pngs: bool = False) -> Path:
    """A reproduce run directory: config.json, nll_train/, nll_test/, gap.json and (optionally) samples/ and
    fid/. Every output is of the model `sha256` but samples/ and fid/, of `samples_sha256` when given.
    `paper_protocol`: whole CIFAR-10 splits (10,000 / 50,000 images) and 50,000 samples, as the paper.
    `gap_images`: also gap_nll_train/ and gap_nll_test/, importance-sampled bounds of that many images
    (`gap_terms`), the test one `gap_shift_bpd` higher, and gap.json from them; `max_gap` its threshold.
    `is_reason` (with is_mean null) and `sample_pngs` as in `write_fid_dir`, `write_samples_manifest`."""
    path.mkdir(parents=True, exist_ok=True)
    layout = ReproduceLayout(path)
    diffusion = DiffusionConfig(T=T, mean_type=mean_type, var_type=var_type)
    config = RunConfig(diffusion=diffusion, training=TrainConfig(data=data, objective=objective))
    from ddpm_bench.shards import atomic_write_json

    atomic_write_json(layout.config, config.to_dict())
    split = data.split(":")[0]
    kw = dict(T=T, sha256=sha256, mean_type=mean_type, var_type=var_type)
    write_nll_dir(layout.nll_train, seed=1, data=f"{split}:train", n=50_000 if paper_protocol else 6, **kw)
    write_nll_dir(layout.nll_test, seed=2, data=f"{split}:test", n=10_000 if paper_protocol else 6, **kw)
    if gap_images:
        write_nll_dir(layout.gap_nll_train, seed=3, data=f"{split}:train", n=gap_images, terms_per_image=4,
                      **kw)
        write_nll_dir(layout.gap_nll_test, seed=4, data=f"{split}:test", n=gap_images, terms_per_image=4,
                      shift_bpd=gap_shift_bpd, **kw)
    write_gap(path, max_gap)
    if fid:
        model = model_entry(samples_sha256 or sha256, "ema", T, mean_type, var_type)
        write_samples_manifest(layout.samples, model, pngs=sample_pngs)
        write_fid_dir(layout.fid, fid=fid_value, ref=fid_ref or data, samples_model=model,
                      n_samples=50_000 if paper_protocol else 100, comparable=paper_protocol,
                      **({} if is_reason is None else
                         {"is_mean": None, "is_std": None, "is_reason": is_reason}))
    return path
