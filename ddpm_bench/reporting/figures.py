"""Figure 5 of Ho et al. (2020): rate and distortion along the reverse process (§4.3), with matplotlib Agg.

Three panels as the paper draws them: rate (bits/dim) against reverse process steps, distortion (RMSE on
[0, 255]) against reverse process steps, and distortion against rate. The paper's Table 4 points are
drawn on top when the curve has T = 1000 steps.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ddpm_bench.rate_distortion_curve import RateDistortionCurve
from ddpm_bench.reporting.paper import PAPER_T, paper_table4
from ddpm_bench.shards import atomic_write_bytes

PNG_DPI = 150


def figure5(curve: RateDistortionCurve, label: str = "measured", title: str | None = None,
            paper_points: bool = True) -> Figure:
    """The three panels of Figure 5 for one curve (a matplotlib Figure on the Agg canvas, no pyplot state)."""
    fig = Figure(figsize=(12.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_rate, ax_dist, ax_rd = fig.subplots(1, 3)
    s = curve.reverse_time
    ax_rate.plot(s, curve.rate_bpd, color="C0", lw=1.5, label=label)
    ax_rate.set_xlabel("Reverse process steps (T - t + 1)")
    ax_rate.set_ylabel("Rate (bits/dim)")
    has_rmse = bool(np.any(np.isfinite(curve.rmse)))
    if has_rmse:
        ax_dist.plot(s, curve.rmse, color="C0", lw=1.5, label=label)
        ax_rd.plot(curve.rate_bpd, curve.rmse, color="C0", lw=1.5, label=label)
    else:
        for ax in (ax_dist, ax_rd):
            ax.text(0.5, 0.5, "no x0 errors (per_image.npz has no 'mse')", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
    ax_dist.set_xlabel("Reverse process steps (T - t + 1)")
    ax_dist.set_ylabel("Distortion (RMSE [0, 255])")
    ax_rd.set_xlabel("Rate (bits/dim)")
    ax_rd.set_ylabel("Distortion (RMSE [0, 255])")
    if paper_points and curve.T == PAPER_T:
        table = paper_table4()
        ps = np.array(sorted(table))
        prate = np.array([table[k][0] for k in ps])
        prmse = np.array([table[k][1] for k in ps])
        style = dict(marker="o", ls="none", ms=4, mfc="none", color="C3", label="paper (Table 4)")
        ax_rate.plot(ps, prate, **style)
        ax_dist.plot(ps, prmse, **style)
        ax_rd.plot(prate, prmse, **style)
    for ax in (ax_rate, ax_dist, ax_rd):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def bits_by_t_figure(terms: np.ndarray, label: str = "measured", title: str | None = None) -> Figure:
    """Where the bits go (as improved DDPM's Figure 2): the mean term L_t in bits/dim against t on a log
    scale (t = 0 is the decoder L_0, t = T the prior L_T), and on a second axis the share of the bound
    in L_0..L_t, cumulated from t = 0. `terms` is per_image.npz's (N, T + 1) exact terms."""
    mean = terms.mean(0)
    t = np.arange(len(mean))
    share = np.cumsum(mean) / mean.sum()
    fig = Figure(figsize=(7.0, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.semilogy(t, np.where(mean > 0, mean, np.nan), color="C0", lw=1.2, label=f"L_t ({label})")
    ax.set_xlabel("diffusion step t (0: decoder L_0, T: prior L_T)")
    ax.set_ylabel("L_t (bits/dim, mean over images)")
    ax.grid(True, which="both", alpha=0.3)
    share_ax = ax.twinx()
    share_ax.plot(t, share, color="C1", lw=1.2, label="share of the bound in L_0..L_t")
    share_ax.set_ylim(0.0, 1.0)
    share_ax.set_ylabel("cumulative share of the bound")
    for frac in (0.5, 0.9):
        k = int(np.searchsorted(share, frac))
        share_ax.annotate(f"{frac:.0%} by t = {k}", (k, share[k]), textcoords="offset points", xytext=(8, -12),
                          fontsize=8, color="C1")
    lines = ax.get_legend_handles_labels()[0] + share_ax.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], fontsize=8, loc="center right")
    ax.set_title(title or f"Where the bits go: {mean.sum():.3f} bits/dim in all", fontsize=10)
    return fig


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure encoded as `fmt` ("png" or "pdf"), without timestamps so that reruns give the same file."""
    buf = io.BytesIO()
    metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
    fig.savefig(buf, format=fmt, dpi=PNG_DPI, metadata=metadata)
    return buf.getvalue()


def save_figure(fig: Figure, stem_path) -> list[str]:
    """Write `stem_path`.png and `stem_path`.pdf atomically; returns the two paths."""
    paths = []
    for fmt in ("png", "pdf"):
        path = f"{stem_path}.{fmt}"
        atomic_write_bytes(path, figure_bytes(fig, fmt))
        paths.append(path)
    return paths
