"""`ddpm-bench rate-distortion`: Table 4 and Figure 5 (paper §4.3) from an nll output, or from a model.

Reads `per_image.npz` of an `nll` output (or runs `nll` into OUT/nll first), computes the rate and
distortion for every t with `ddpm_bench.rate_distortion`, and writes atomically:
curve.csv, table4.csv, table4.md, figure5.png, figure5.pdf and summary.json (written last).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ddpm_bench import __version__
from ddpm_bench.errors import UserError
from ddpm_bench.provenance import environment
from ddpm_bench.rate_distortion import distortion_bpd, rate_distortion_curve
from ddpm_bench.reporting import columns as C
from ddpm_bench.reporting.figures import figure5, save_figure
from ddpm_bench.reporting.inputs import CURVE_FILE, RD_COMMAND, RD_SUMMARY, load_per_image
from ddpm_bench.reporting.paper import PAPER_T, paper_values
from ddpm_bench.reporting.tables import curve_frame, table4_frame, to_csv, write_frame
from ddpm_bench.shards import atomic_write_json, atomic_write_text, prepare_run_dir

NLL_SUBDIR = "nll"  # where the bound goes when a model is given instead of NLL_DIR
RATE_TOLERANCE_BPD = 1e-6  # |rate(t=1) - summary rate_bpd| above this is reported as a warning
# summary.json keys copied from the nll summary, for provenance
NLL_PROVENANCE_KEYS = ("model", "data", "seed", "draws", "clip", "decoder_cdf", "mean_type", "var_type", "precision",
                       "dims", "ddpm_bench_version")
# nll arguments that do not change its result (left out of this run's settings)
NLL_VOLATILE_ARGS = ("out", "force", "dry_run", "progress", "batch_size", "shard_size", "device")


def run_rate_distortion(out: str | Path, nll_dir: str | Path | None = None, nll_args: dict | None = None,
                        force: bool = False) -> dict:
    """Compute and write the rate-distortion outputs into `out`; returns the summary.

    Exactly one of `nll_dir` (a finished `ddpm-bench nll` output) and `nll_args` (keyword arguments of
    `ddpm_bench.jobs.nll.run_nll`, without `out`/`force`, to bound the model into OUT/nll first).
    """
    if (nll_dir is None) == (nll_args is None):
        raise UserError("give either NLL_DIR or a model (--ckpt or --model) with --data, not both and not neither")
    out = Path(out)
    if nll_args is not None:
        from ddpm_bench.jobs.nll import run_nll

        if nll_args.get("dry_run"):
            run_nll(**nll_args, out=str(out / NLL_SUBDIR), force=False)
            return {}
        settings = {k: v for k, v in nll_args.items() if k not in (*NLL_VOLATILE_ARGS, "diffusion_flags")}
        settings.update(nll_args.get("diffusion_flags") or {})  # flat, so a refusal names the flag that differs
        prepare_run_dir(out, settings, force=force, command=RD_COMMAND)
        nll_dir = out / NLL_SUBDIR
        run_nll(**nll_args, out=str(nll_dir), force=False)
    else:
        nll_dir = Path(nll_dir)
        load_per_image(nll_dir)  # refuse bad input before touching --out
        prepare_run_dir(out, {"nll_dir": str(nll_dir.resolve())}, force=force, command=RD_COMMAND)
    return write_rate_distortion(Path(nll_dir), out)


def write_rate_distortion(nll_dir: Path, out: Path) -> dict:
    """The outputs of `rate-distortion` for the nll output `nll_dir`, into the prepared directory `out`."""
    summary, terms, mse = load_per_image(nll_dir)
    curve = rate_distortion_curve(terms, mse)
    T, n = curve.T, terms.shape[0]
    warnings = []
    if mse is None:
        warnings.append(f"{nll_dir / 'per_image.npz'} has no 'mse': the distortion columns are empty")
    rate_t1 = float(curve.rate_bpd[-1])  # rows are t = T..1
    nll_rate = summary.get("rate_bpd")
    if isinstance(nll_rate, (int, float)) and abs(rate_t1 - nll_rate) > RATE_TOLERANCE_BPD:
        warnings.append(f"rate at t = 1 from per_image.npz ({rate_t1:.8f}) differs from {nll_dir / 'summary.json'} "
                        f"rate_bpd ({nll_rate:.8f})")
    for w in warnings:
        print(f"ddpm-bench rate-distortion: warning: {w}", file=sys.stderr)

    atomic_write_text(out / CURVE_FILE, to_csv(curve_frame(curve)))
    files = [CURVE_FILE, *(Path(p).name for p in write_frame(table4_frame(curve), out / "table4"))]
    title = f"{summary.get('data', '')}, T = {T}, {n} images"
    files += [Path(p).name for p in save_figure(figure5(curve, title=title), out / "figure5")]

    section = paper_values()["section_4_3"]
    result = {
        C.SUMMARY_COMMAND: RD_COMMAND,
        C.SUMMARY_NLL_DIR: str(nll_dir.resolve()),
        C.SUMMARY_T: T,
        C.SUMMARY_N_IMAGES: n,
        C.SUMMARY_RATE_BPD: rate_t1,
        C.SUMMARY_DISTORTION_BPD: distortion_bpd(terms),
        C.SUMMARY_RMSE_AT_T1: float(curve.rmse[-1]) if mse is not None else None,
        "rmse_per_image_at_t1": float(curve.rmse_per_image[-1]) if mse is not None else None,
        "prior_bpd": float(np.mean(terms[:, T])),
        "nll_rate_bpd": nll_rate,
        "paper": ({"rate_bpd": section["rate_bpd"], "distortion_bpd": section["distortion_bpd"],
                   "rmse_0_255": section["rmse_0_255"]} if T == PAPER_T else None),
        **{k: summary.get(k) for k in NLL_PROVENANCE_KEYS},
        "files": files,
        "warnings": warnings,
        "ddpm_bench_version_rate_distortion": __version__,
        "environment": environment(),
    }
    atomic_write_json(out / RD_SUMMARY, result)
    return result
