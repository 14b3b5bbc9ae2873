"""Self-consistent synthetic outputs of `nll` and `fid` (the file formats of SPEC section 2), for the
rate-distortion and report tests. The numbers are random but the files agree with each other exactly:
summary.json is computed from per_image.npz the way the bound engine defines it (means over images)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.identity import model_identity
from ddpm_bench.outputs import NllSummary, PerImage
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


def model_entry(weights_sha256: str = "ab" * 32, weights: str = "ema", T: int = 20) -> dict:
    """The `model` field of an output: provenance and a model identity (ddpm_bench.identity)."""
    ident = model_identity("ckpt", weights, weights_sha256, DiffusionConfig(T=T), "/runs/x/checkpoints/last.pt")
    return {"kind": "ckpt", "path": "/runs/x/checkpoints/last.pt", "sha256": "ef" * 32, "weights": weights,
            "step": 10, "identity": ident.to_dict()}


def write_nll_dir(path: Path, n: int = 6, T: int = 20, seed: int = 0, data: str = "embedded:test",
                  sha256: str = "ab" * 32, weights: str = "ema") -> Path:
    """An nll output directory: summary.json, terms.csv, per_image.npz (through the typed outputs)."""
    path.mkdir(parents=True, exist_ok=True)
    terms, mse = per_image_arrays(n, T, seed)
    total = terms.sum(axis=1)
    run_id = hashlib.sha256(f"{path.name}{n}{T}{seed}{data}{sha256}".encode()).hexdigest()
    bound = {"seed": seed, "draws": 1, "clip": True, "decoder_cdf": "exact", "precision": "fp32"}
    summary = NllSummary(
        run_id=run_id, total_bpd=float(total.mean()), total_bpd_stderr=float(total.std(ddof=1) / np.sqrt(n)),
        prior_bpd=float(terms[:, T].mean()), kl_bpd=float(terms[:, 1:T].sum(axis=1).mean()),
        decoder_bpd=float(terms[:, 0].mean()), rate_bpd=float(terms[:, 1:].sum(axis=1).mean()),
        rate_bpd_stderr=None, decoder_bpd_stderr=None, n_images=n, dims=3 * 8 * 8, T=T, data=data,
        data_sha256=hashlib.sha256(data.encode()).hexdigest(), seed=seed, draws=1, clip=True, decoder_cdf="exact",
        mean_type="eps", var_type="fixed-large", precision="fp32", model=model_entry(sha256, weights, T),
        bound=bound, diffusion=asdict(DiffusionConfig(T=T)), ddpm_bench_version="0.1.0", seconds=1.0,
        network_evals=n * T)
    rows = ["term,bpd_mean,bpd_stderr,mse_mean"]
    for k in range(T + 1):
        m = "" if k == T else repr(float(mse[:, k].mean()))
        rows.append(f"{k},{terms[:, k].mean()!r},{terms[:, k].std(ddof=1) / np.sqrt(n)!r},{m}")
    (path / "terms.csv").write_text("\n".join(rows) + "\n")
    PerImage(terms=terms, mse=mse, index=np.arange(n, dtype=np.int64), run_id=run_id).write(path)
    summary.write(path)
    return path


def write_fid_dir(path: Path, fid: float = 12.5, is_mean: float | None = 7.1, is_std: float | None = 0.2,
                  ref: str = "embedded:train", n_samples: int = 100) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    metrics = {"fid": fid, "is_mean": is_mean, "is_std": is_std, "n_samples": n_samples, "n_ref": 200, "ref": ref,
               "backend": "torch-fidelity", "feature_extractor": {"name": "inception-v3-compat", "sha256": "cd" * 32},
               "by_backend": {"torch-fidelity": {"fid": fid}}, "warnings": []}
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def write_run_dir(path: Path, objective: str = "L_simple", var_type: str = "fixed-large", mean_type: str = "eps",
                  data: str = "embedded:train", T: int = 20, fid: bool = True, fid_ref: str | None = None,
                  fid_value: float = 12.5) -> Path:
    """A reproduce run directory with config.json, nll_train/, nll_test/, gap.json and (optionally) fid/."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"model": {"ch": 32}, "diffusion": {"T": T, "beta_schedule": "linear", "mean_type": mean_type,
                                                 "var_type": var_type},
              "training": {"objective": objective}, "data": data}
    (path / "config.json").write_text(json.dumps(config))
    split = data.split(":")[0]
    write_nll_dir(path / "nll_train", T=T, seed=1, data=f"{split}:train")
    write_nll_dir(path / "nll_test", T=T, seed=2, data=f"{split}:test")
    (path / "gap.json").write_text(json.dumps({"gap_bpd": 0.01, "ci95": [-0.02, 0.04], "train_bpd": 3.7, "test_bpd": 3.71}))
    if fid:
        write_fid_dir(path / "fid", fid=fid_value, ref=fid_ref or data)
    return path
