"""`ddpm-bench rate-distortion`: Table 4 and Figure 5 (paper §4.3) from an nll output, or from a model.

Reads `per_image.npz` of an `nll` output (or runs `nll` into OUT/nll first), computes the rate and
distortion for every t with `ddpm_bench.rate_distortion_curve`, and writes atomically:
curve.csv, table4.csv, table4.md, figure5.png, figure5.pdf and summary.json (written last). Table 4 shows
the paper's columns for T = 1000 and its deltas only where `report` shows them
(`reporting.tables.table4_comparison`: the bound on the whole CIFAR-10 test set).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ddpm_bench import distributed, run_dir
from ddpm_bench.arguments import given, say
from ddpm_bench.errors import UserError
from ddpm_bench.estimators import ESTIMATORS, make_estimator, read_output
from ddpm_bench.jobs.nll import NllJob, run_nll
from ddpm_bench.messages import warn
from ddpm_bench.outputs import NllOutput, RateDistortionSummary, record_files
from ddpm_bench.provenance import environment
from ddpm_bench.rate_distortion_curve import distortion_bpd, rate_distortion_curve
from ddpm_bench.reporting import columns as C
from ddpm_bench.reporting.figures import bits_by_t_figure, figure5, save_figure
from ddpm_bench.reporting.paper import PAPER_T, paper_values
from ddpm_bench.reporting.tables import curve_frame, table4_frame, to_csv, write_frame
from ddpm_bench.shards import atomic_write_text
from ddpm_bench.version import __version__

COMMAND = RateDistortionSummary.COMMAND
NLL_SUBDIR = "nll"  # where the bound goes when a model is given instead of NLL_DIR
RATE_TOLERANCE_BPD = 1e-6  # |rate(t=1) - summary rate_bpd| above this is reported as a warning


def check_every_term(output: NllOutput, origin: str) -> None:
    """Rate and distortion need every term of every image: an estimate that does not give them (the
    importance-sampled bound, whatever it happened to draw, or a likelihood) is refused."""
    cls = ESTIMATORS[output.summary.estimator]
    if not cls.RATE_DISTORTION:
        raise UserError(f"{origin}: rate and distortion need every term of every image, which an nll output of the "
                        f"{cls.NAME!r} estimator does not give: " + say("run nll without --terms or --ode",
                                                                       "compute it with bound(...) without terms= or options="))


def run_rate_distortion(out: str | Path, source: str | Path | NllJob, force: bool = False) -> RateDistortionSummary | None:
    """Compute and write the rate-distortion outputs into `out`; returns the summary. `source` is a finished
    `ddpm-bench nll` output, or an `NllJob` of the exact bound, run first into OUT/nll (its own run, resumed
    there). The run's identity is the nll run's id: a moved nll output is the same input, another one is
    not."""
    out = Path(out)
    if isinstance(source, NllJob):
        job = replace(source, run=replace(source.run, out=str(out / NLL_SUBDIR)))
        if job.run.dry_run:
            run_nll(job)
            return None
        if not make_estimator(job.options).RATE_DISTORTION:
            raise UserError("rate-distortion needs the exact bound: " + say("leave out --terms and --ode",
                                                                            "leave out terms= and options="))
        if distributed.launch_rank() == 0:  # before the process group exists; the identity of this run is that of the bound in OUT/nll (its own run.json)
            run_dir.claim(out, COMMAND, {"nll": NLL_SUBDIR}, force=force)
        nll = run_nll(job)
        if nll is None:  # another rank of a torchrun launch
            return None
        return write_rate_distortion(nll, out)
    nll = read_output(source)  # refuse bad input before touching --out
    check_every_term(nll, given("nll_dir", source))
    run_dir.claim(out, COMMAND, {"nll_run_id": nll.summary.run_id}, force=force)
    return write_rate_distortion(nll, out)


def write_rate_distortion(source: NllOutput, out: Path) -> RateDistortionSummary:
    """The outputs of `rate-distortion` for the nll output `source`, into the claimed directory `out`."""
    check_every_term(source, str(source.path))
    summary, terms, mse = source.summary, source.per_image.terms, source.per_image.mse
    curve = rate_distortion_curve(terms, mse)
    T, n = curve.T, terms.shape[0]
    warnings = []
    rate_t1 = float(curve.rate_bpd[-1])  # rows are t = T..1
    if abs(rate_t1 - summary.rate_bpd) > RATE_TOLERANCE_BPD:
        warnings.append(f"rate at t = 1 from per_image.npz ({rate_t1:.8f}) differs from {source.path / summary.FILE} "
                        f"rate_bpd ({summary.rate_bpd:.8f})")
    for w in warnings:
        warn(w)

    atomic_write_text(out / RateDistortionSummary.CURVE, to_csv(curve_frame(curve)))
    table4 = table4_frame(curve, summary.data, n)  # deltas to the paper by the report's rule
    files = [RateDistortionSummary.CURVE, *(Path(p).name for p in write_frame(table4,
                                                                          out / RateDistortionSummary.TABLE4))]
    title = f"{summary.data}, T = {T}, {n} images"
    files += [Path(p).name for p in save_figure(figure5(curve, title=title), out / RateDistortionSummary.FIGURE5)]
    files += [Path(p).name for p in save_figure(bits_by_t_figure(terms, title=f"Where the bits go: {title}"),
                                                out / RateDistortionSummary.BITS_BY_T)]

    section = paper_values()["section_4_3"]
    result = RateDistortionSummary(
        command=COMMAND,
        nll_run_id=summary.run_id,
        nll_dir=str(source.path.resolve()),
        T=T,
        n_images=n,
        rate_bpd=rate_t1,
        distortion_bpd=distortion_bpd(terms),
        rmse_at_t1=float(curve.rmse[-1]),
        model=summary.model,
        data=summary.data,
        seed=summary.seed,
        draws=summary.draws,
        clip=summary.clip,
        decoder_cdf=summary.decoder_cdf,
        files=record_files(out, files),
        extra={
            "rmse_per_image_at_t1": float(curve.rmse_per_image[-1]),
            "prior_bpd": float(np.mean(terms[:, T])),
            "nll_rate_bpd": summary.rate_bpd,
            "paper": ({"rate_bpd": section["rate_bpd"], "distortion_bpd": section["distortion_bpd"],
                       "rmse_0_255": section["rmse_0_255"]} if T == PAPER_T else None),
            "mean_type": summary.mean_type, "var_type": summary.var_type, "precision": summary.precision,
            "dims": summary.dims, "ddpm_bench_version": summary.ddpm_bench_version,
            "warnings": warnings,
            "ddpm_bench_version_rate_distortion": __version__,
            "environment": environment(),
        },
    )
    result.write(out)
    return result


def table4_lines(out: str | Path) -> list[str]:
    """What `rate-distortion` did, from the files it wrote in `out`: Table 4's rows (beside the paper's where
    T = 1000) and where the files are."""
    out = Path(out)
    s = RateDistortionSummary.read(out)
    table = pd.read_csv(out / f"{RateDistortionSummary.TABLE4}.csv")
    title = f"{s.data}, T = {s.T}, {s.n_images} images"
    paper = table[C.PAPER_RATE_BPD].notna().any()
    lines = [f"rate-distortion: {title}; Table 4 (rate = L_1..L_t in bits/dim, distortion = RMSE on 0..255)"
             + (", paper in brackets" if paper else ""), f"  {'reverse time':>12}  {'rate':>16}  {'RMSE':>16}"]
    for _, r in table.iterrows():
        rate, rmse = f"{r[C.RATE_BPD]:.3f}", f"{r[C.RMSE]:.3f}"
        if paper:
            rate, rmse = f"{rate} [{r[C.PAPER_RATE_BPD]:.3f}]", f"{rmse} [{r[C.PAPER_RMSE]:.3f}]"
        lines.append(f"  {int(r[C.REVERSE_TIME]):>12}  {rate:>16}  {rmse:>16}")
    lines.append(f"  written to {out}: {RateDistortionSummary.CURVE}, {RateDistortionSummary.TABLE4}.csv/.md, "
                 f"{RateDistortionSummary.FIGURE5}.png/.pdf, {RateDistortionSummary.BITS_BY_T}.png/.pdf, "
                 f"{RateDistortionSummary.FILE}")
    return lines
