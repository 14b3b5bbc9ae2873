"""Figure 5 of Ho et al. (2020): rate and distortion along the reverse process (§4.3), and where the bits go
(improved DDPM's Figure 2), with matplotlib Agg.

Figure 5 has three panels as the paper draws them: rate (bits/dim) against reverse process steps,
distortion (RMSE on [0, 255]) against reverse process steps, and distortion against rate. The paper's
Table 4 points are drawn on top when a curve has T = 1000 steps. Each figure draws every model it is given,
one colour each, labelled; the labels are in a legend below the axes, never on a curve.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ddpm_bench.rate_distortion_curve import RateDistortionCurve
from ddpm_bench.reporting.paper import PAPER_T, paper_table4
from ddpm_bench.shards import atomic_write_bytes

PNG_DPI = 150
SHARES = (0.5, 0.9)  # the shares of the bound "where the bits go" marks on its cumulative curve
SHARE_MARKERS = (("o", "circle"), ("s", "square"))  # how each is marked, and named in the legend


def _legend_below(fig: Figure, axes) -> None:
    """One legend for the whole figure, below its axes (outside them, so no label is on a curve)."""
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(2, len(handles)), fontsize=8,
                   frameon=False)


def figure5(curve: RateDistortionCurve, label: str = "measured", title: str | None = None,
            paper_points: bool = True) -> Figure:
    """The three panels of Figure 5 for one curve (a matplotlib Figure on the Agg canvas, no pyplot state)."""
    return figure5_models([(label, curve)], title, paper_points)


def figure5_models(curves: Sequence[tuple[str, RateDistortionCurve]], title: str | None = None,
                   paper_points: bool = True) -> Figure:
    """Figure 5 with one curve per model, each in its own colour and labelled with its name."""
    fig = Figure(figsize=(12.0, 3.6 + 0.2 * len(curves)), layout="constrained")
    FigureCanvasAgg(fig)
    ax_rate, ax_dist, ax_rd = fig.subplots(1, 3)
    any_rmse = False
    for j, (label, curve) in enumerate(curves):
        s, color = curve.reverse_time, f"C{j % 10}"
        ax_rate.plot(s, curve.rate_bpd, color=color, lw=1.5, label=label)
        if np.any(np.isfinite(curve.rmse)):
            any_rmse = True
            ax_dist.plot(s, curve.rmse, color=color, lw=1.5)
            ax_rd.plot(curve.rate_bpd, curve.rmse, color=color, lw=1.5)
    if not any_rmse:
        for ax in (ax_dist, ax_rd):
            ax.text(0.5, 0.5, "no x0 errors (per_image.npz has no 'mse')", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
    ax_rate.set_xlabel("Reverse process steps (T - t + 1)")
    ax_rate.set_ylabel("Rate (bits/dim)")
    ax_dist.set_xlabel("Reverse process steps (T - t + 1)")
    ax_dist.set_ylabel("Distortion (RMSE [0, 255])")
    ax_rd.set_xlabel("Rate (bits/dim)")
    ax_rd.set_ylabel("Distortion (RMSE [0, 255])")
    if paper_points and any(curve.T == PAPER_T for _, curve in curves):
        table = paper_table4()
        ps = np.array(sorted(table))
        prate = np.array([table[k][0] for k in ps])
        prmse = np.array([table[k][1] for k in ps])
        style = dict(marker="o", ls="none", ms=4, mfc="none", color="C3" if len(curves) < 4 else "black")
        ax_rate.plot(ps, prate, label="paper (Table 4, CIFAR-10)", **style)
        ax_dist.plot(ps, prmse, **style)
        ax_rd.plot(prate, prmse, **style)
    for ax in (ax_rate, ax_dist, ax_rd):
        ax.grid(True, alpha=0.3)
    _legend_below(fig, [ax_rate])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def bits_by_t_figure(terms: np.ndarray, label: str = "measured", title: str | None = None) -> Figure:
    """Where the bits go for one model: see `bits_by_t_models`."""
    return bits_by_t_models([(label, terms)], title)


def bits_by_t_models(models: Sequence[tuple[str, np.ndarray]], title: str | None = None) -> Figure:
    """Where the bits go (as improved DDPM's Figure 2): the mean term L_t in bits/dim against t on a log
    scale (t = 0 is the decoder L_0, t = T the prior L_T), and on a second axis the share of the bound
    in L_0..L_t, cumulated from t = 0, with the steps by which it reaches 50% and 90% marked on it (and
    named in the legend). `models`: (label, per_image.npz's (N, T + 1) exact terms) for each model, one
    colour each."""
    fig = Figure(figsize=(7.0, 3.8 + 0.5 * len(models)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    share_ax = ax.twinx()
    totals = []
    for j, (label, terms) in enumerate(models):
        mean = terms.mean(0)
        totals.append(mean.sum())
        t = np.arange(len(mean))
        share = np.cumsum(mean) / mean.sum()
        color = f"C{(2 * j) % 10}", f"C{(2 * j + 1) % 10}"
        ax.semilogy(t, np.where(mean > 0, mean, np.nan), color=color[0], lw=1.2, label=f"L_t ({label})")
        reached = [int(np.searchsorted(share, frac)) for frac in SHARES]
        words = ", ".join(f"{frac:.0%} by t = {k} ({name})"
                          for frac, k, (_, name) in zip(SHARES, reached, SHARE_MARKERS, strict=True))
        share_ax.plot(t, share, color=color[1], lw=1.2,
                      label=f"share of the bound in L_0..L_t ({label}):\n{words}")
        for k, (marker, _) in zip(reached, SHARE_MARKERS, strict=True):
            share_ax.plot([k], [share[k]], marker=marker, ms=6, mfc="none", color=color[1], ls="none")
    ax.set_xlabel("diffusion step t (0: decoder L_0, T: prior L_T)")
    ax.set_ylabel("L_t (bits/dim, mean over images)")
    ax.grid(True, which="both", alpha=0.3)
    share_ax.set_ylim(0.0, 1.0)
    share_ax.set_ylabel("cumulative share of the bound")
    lines = ax.get_legend_handles_labels()[0] + share_ax.get_legend_handles_labels()[0]
    fig.legend(lines, [h.get_label() for h in lines], loc="outside lower center", ncols=1, fontsize=8,
               frameon=False)
    default = "Where the bits go" + (f": {totals[0]:.3f} bits/dim in all" if len(models) == 1 else "")
    ax.set_title(title or default, fontsize=10)
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
