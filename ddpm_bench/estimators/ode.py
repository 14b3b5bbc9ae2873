"""The probability-flow ODE likelihood (`nll --ode`): the same model's exact log-likelihood under its
deterministic probability-flow ODE (Song et al. 2021), with uniform dequantization, in bits/dim
(ddpm_bench/probability_flow.py; conventions in docs/likelihood.md).

Per image and draw d: x_0 dequantized with u(seed, j, d), the ODE of the model's own eps (x0 and v
predictions converted) solved from sigma_min to sigma_max by Dormand-Prince 5(4) with the step size of each
image its own, the divergence by Hutchinson's estimator with the probe z(seed, j, d) fixed through the
solve (or exactly), the prior N(0, (1 + sigma_max^2) I) at the top. `--draws K` averages K draws per image;
the standard error over images includes the probe and dequantization noise. A likelihood, not a bound: it
is never compared with or shown as one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ddpm_bench.arguments import given, named, say
from ddpm_bench.data import ImageSet
from ddpm_bench.errors import UserError
from ddpm_bench.estimators.base import Estimator, Progress, check_between_steps
from ddpm_bench.network import Network
from ddpm_bench.noise import check_draws, check_seed
from ddpm_bench.noise_level import fractional_index, noise_level_at, noise_levels
from ddpm_bench.outputs import (
    PER_IMAGE_FILE,
    NllOutput,
    NllSummary,
    check_same_run,
    per_image_columns,
    read_npz,
    stderr_of_mean,
)
from ddpm_bench.probability_flow import (
    BPD,
    DEQUANTIZATIONS,
    DIVERGENCE_BPD,
    PRIOR_BPD,
    PROBE_KINDS,
    EpsFn,
    bits_per_dim_offset,
    bits_per_dim_parts,
    dequantization_noise,
    dequantize,
    divergence_probe,
    ode_log_likelihood,
)
from ddpm_bench.shards import atomic_write_npz

DIVERGENCES = (*PROBE_KINDS, "exact")
PROBE_IMAGES = 2  # images whose solve a dry run times, for the cost of the rest
EXACT_MAX_DIMS = 4096  # the exact divergence costs D vector-Jacobian products per evaluation


@dataclass(frozen=True)
class OdeOptions:
    """The probability-flow ODE likelihood; each field's `help` is its flag's."""

    seed: int = field(default=0, metadata={"help": "dequantization noise and probe of (image j, draw d) depend on "
                                                   "(seed, j, d) only"})
    draws: int = field(default=1, metadata={"help": "dequantization-and-probe draws averaged per image"})
    rtol: float = field(default=1e-5, metadata={"help": "relative tolerance of the Dormand-Prince 5(4) solver"})
    atol: float = field(default=1e-5, metadata={"help": "absolute tolerance of the Dormand-Prince 5(4) solver"})
    divergence: str = field(default="rademacher", metadata={
        "choices": DIVERGENCES, "help": "Hutchinson probe (rademacher, gaussian) or exact (D vector-Jacobian "
                                        "products per evaluation: small images only)"})
    dequantization: str = field(default="ddpm-bench", metadata={
        "choices": DEQUANTIZATIONS, "help": "ddpm-bench: x_0 = (v - 0.5 + u) / 127.5 - 1, + log2(127.5) bits/dim; "
                                            "score-sde: x_0 = 2 (v + u) / 256 - 1, + 7 (Song et al.'s code)"})

    def __post_init__(self) -> None:
        check_seed(self.seed)
        check_draws(self.draws)
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise UserError(f"{named(name)} must be a number in (0, 1), got {value!r}")
        if self.divergence not in DIVERGENCES:
            raise UserError(f"{given('divergence', self.divergence)}: choose from {', '.join(DIVERGENCES)}")
        if self.dequantization not in DEQUANTIZATIONS:
            raise UserError(f"{given('dequantization', self.dequantization)}: choose from "
                            f"{', '.join(DEQUANTIZATIONS)}")


@dataclass(frozen=True, kw_only=True)
class OdeSummary(NllSummary):
    """The ODE likelihood's parts (bits/dim, their sum is `total_bpd`) and its settings."""

    prior_bpd: float  # -log N(y(sigma_max); 0, (1 + sigma_max^2) I) / (D ln 2)
    divergence_bpd: float  # -integral of the divergence / (D ln 2)
    dequantization_bpd: float  # the bin-width constant: log2(127.5) or 7
    nfe_mean: float  # network evaluations per image and draw
    draws: int
    ode: dict  # the options, and the solver and noise levels they mean


@dataclass(frozen=True)
class OdePerImage:
    """`per_image.npz` of the ODE likelihood: each image's `bpd` (its total), `prior_bpd`, `divergence_bpd`
    (means over draws), `nfe` (network evaluations over its draws), `index` and `run_id`."""

    FILE: ClassVar[str] = PER_IMAGE_FILE
    KEYS: ClassVar[tuple[str, ...]] = ("bpd", "prior_bpd", "divergence_bpd", "nfe")

    bpd: np.ndarray
    prior_bpd: np.ndarray
    divergence_bpd: np.ndarray
    nfe: np.ndarray
    index: np.ndarray
    run_id: str

    @property
    def totals(self) -> np.ndarray:
        return self.bpd

    def means(self) -> dict[str, np.ndarray]:
        """The summary's parts that are means over images, each with its (N,) per-image values."""
        return {"total_bpd": self.bpd, "prior_bpd": self.prior_bpd, "divergence_bpd": self.divergence_bpd}

    def write(self, folder: str | Path) -> list[str]:
        atomic_write_npz(Path(folder) / self.FILE, bpd=self.bpd, prior_bpd=self.prior_bpd,
                         divergence_bpd=self.divergence_bpd, nfe=self.nfe.astype(np.int64),
                         index=self.index.astype(np.int64), run_id=np.array(self.run_id))
        return [self.FILE]

    @classmethod
    def read(cls, folder: str | Path, summary: NllSummary | None = None) -> OdePerImage:
        path = Path(folder) / cls.FILE
        got = read_npz(path, (*cls.KEYS, "index", "run_id"))
        run_id = str(got.pop("run_id"))
        n = per_image_columns(path, got, ("bpd", "prior_bpd", "divergence_bpd"), ("nfe", "index"))
        check_same_run(path, run_id, n, summary)
        return cls(**got, run_id=run_id)


def eps_in_sigma(network: Network) -> tuple[EpsFn, float, float]:
    """The model's eps as the ODE takes it, a function of (x, sigma) with sigma = exp(gamma / 2), and its
    range [sigma_min, sigma_max]: a discrete model's between its first and last step (at the fractional
    index of sigma, its x0 or v converted with abar = 1 / (1 + sigma^2)), a continuous one's over its own."""
    if network.convention.continuous:
        gamma_min, gamma_max = network.gamma_range()

        def eps_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return network.eps(x, 2.0 * torch.log(sigma))

        return eps_fn, math.exp(0.5 * gamma_min), math.exp(0.5 * gamma_max)
    sigmas = noise_levels(network.diffusion.schedule().alphas_cumprod).to(network.device)

    def discrete_eps(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = fractional_index(sigma, sigmas)
        abar = 1.0 / (1.0 + noise_level_at(s, sigmas).square())
        return network.predict_eps(x, s, abar)

    return discrete_eps, float(sigmas[0]), float(sigmas[-1])


class Ode(Estimator):
    NAME = "ode"
    QUANTITY = "likelihood"
    COLUMN = "likelihood"
    OPTIONS = OdeOptions
    FLAG = ("--ode", "the probability-flow ODE likelihood (Song et al. 2021) instead of the bound")
    SHARD_KEYS = ("bpd", "prior_bpd", "divergence_bpd", "nfe", "seconds")
    SUMMARY = OdeSummary
    PER_IMAGE = OdePerImage
    PROGRESS_UNIT = "img"

    def __init__(self, options: OdeOptions):
        super().__init__(options)
        self._nfe_per_image: float | None = None  # from a dry run's probe
        self._noise: str | None = None  # a continuous model's noise levels, in words (`check`)

    def check(self, network: Network, images: ImageSet) -> None:
        d = network.diffusion
        ode = say("--ode", "options=OdeOptions()")  # the estimator as the caller chose it
        self._noise = None
        if network.convention.continuous:
            gamma_min, gamma_max = network.gamma_range()
            self._noise = (f"sigma = exp(gamma / 2), gamma in [{gamma_min:.6g}, {gamma_max:.6g}], the model's own range "
                           f"(noise_input {network.convention.noise_input!r}, prediction "
                           f"{network.convention.prediction!r})")
        else:
            check_between_steps(network, ode, "the ODE")
            try:
                noise_levels(d.schedule().alphas_cumprod)
            except ValueError as e:
                raise UserError(f"{ode}: the {d.beta_schedule} schedule: {e}") from None
        D = math.prod(images.shape)
        if self.options.divergence == "exact" and D > EXACT_MAX_DIMS:
            raise UserError(f"{given('divergence', 'exact')} needs {D} vector-Jacobian products per evaluation for "
                            f"images of {D} values; use it for images of at most {EXACT_MAX_DIMS} values, or a probe")

    def evaluations_per_image(self, T: int) -> int:
        return 1  # the progress bar counts images; the evaluations are the solver's (nfe)

    def cost(self, n_images: int, T: int) -> tuple[int, str]:
        per = self._nfe_per_image
        if per is None:
            return 0, f"{self.options.draws} ODE solve(s) (evaluations unknown until solved)"
        return int(round(n_images * per * self.options.draws)), \
            f"{self.options.draws} ODE solve(s) of ~{per:.0f} evaluations (forward and backward) each"

    def probe_cost(self, network: Network, images: ImageSet, batch_size: int) -> float:
        """Solve the first images once; seconds per image (and the evaluations per image, for `cost`)."""
        n = min(PROBE_IMAGES, len(images))
        x = torch.from_numpy(images.images[:n]).permute(0, 3, 1, 2)
        t0 = time.perf_counter()
        got = self._solve(network, x, torch.from_numpy(images.index[:n]), draw=0)
        self._nfe_per_image = float(got["nfe"].mean())
        return (time.perf_counter() - t0) / n

    def label(self) -> str:
        return "the ODE likelihood (--ode)"

    def _solve(self, network: Network, images: torch.Tensor, index: torch.Tensor, draw: int) -> dict[str, np.ndarray]:
        """One draw of every image: its bits/dim parts and evaluations."""
        o = self.options
        device = network.device
        shape = tuple(images.shape[1:])
        u = dequantization_noise(o.seed, index, draw, shape).to(device)
        x0 = dequantize(images.to(device), u, o.dequantization)
        probe = None if o.divergence == "exact" else divergence_probe(o.seed, index, draw, shape, o.divergence).to(device)
        eps_fn, sigma_min, sigma_max = eps_in_sigma(network)
        result = ode_log_likelihood(eps_fn, x0, sigma_min, sigma_max, probe=probe, rtol=o.rtol, atol=o.atol)
        parts = bits_per_dim_parts(result, math.prod(shape), o.dequantization)
        return {BPD: parts[BPD].cpu().numpy(), PRIOR_BPD: parts[PRIOR_BPD].cpu().numpy(),
                DIVERGENCE_BPD: parts[DIVERGENCE_BPD].cpu().numpy(), "nfe": result.nfe.cpu().numpy()}

    def compute(self, network: Network, images: torch.Tensor, index: torch.Tensor, *, batch_size: int,
                progress: Progress | None) -> dict[str, np.ndarray]:
        """The draws of a shard's images, solved `batch_size` images at a time (each with its own steps)."""
        t0 = time.perf_counter()
        n = images.shape[0]
        sums = {BPD: np.zeros(n), PRIOR_BPD: np.zeros(n), DIVERGENCE_BPD: np.zeros(n), "nfe": np.zeros(n, np.int64)}
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            for d in range(self.options.draws):
                got = self._solve(network, images[sl], index[sl], d)
                for k in sums:
                    sums[k][sl] += got[k]
            if progress is not None:
                progress(sl.stop - sl.start)
        draws = self.options.draws
        return {BPD: sums[BPD] / draws, PRIOR_BPD: sums[PRIOR_BPD] / draws,
                DIVERGENCE_BPD: sums[DIVERGENCE_BPD] / draws, "nfe": sums["nfe"],
                "seconds": np.full(n, (time.perf_counter() - t0) / n)}

    def network_evals(self, merged: dict[str, np.ndarray], T: int) -> int:
        return int(merged["nfe"].sum())

    def finish(self, merged: dict[str, np.ndarray], common: dict) -> NllOutput:
        o = self.options
        bpd = merged[BPD]
        per_image = OdePerImage(bpd=bpd, prior_bpd=merged[PRIOR_BPD], divergence_bpd=merged[DIVERGENCE_BPD],
                                nfe=merged["nfe"].astype(np.int64), index=merged["index"], run_id=common["run_id"])
        settings = {**asdict(o), "solver": "Dormand-Prince 5(4), step size per image, error the larger of the RMS "
                                           "over y and over the divergence integral",
                    "time": self._noise or "sigma = sqrt((1 - abar) / abar), network index interpolated in log sigma",
                    "prior": "N(0, (1 + sigma_max^2) I) in y = x / sqrt(abar), the DDPM prior N(0, I) at step T"
                    if self._noise is None else "N(0, (1 + sigma_max^2) I) in y = z / alpha: N(0, I) in z at gamma_max"}
        summary = OdeSummary(**common, total_bpd=float(bpd.mean()), total_bpd_stderr=stderr_of_mean(bpd),
                             prior_bpd=float(merged[PRIOR_BPD].mean()),
                             divergence_bpd=float(merged[DIVERGENCE_BPD].mean()),
                             dequantization_bpd=bits_per_dim_offset(o.dequantization),
                             nfe_mean=float(merged["nfe"].mean() / o.draws), draws=o.draws, ode=settings)
        return NllOutput(None, summary, per_image)

    @classmethod
    def summary_lines(cls, summary: OdeSummary) -> list[str]:
        se = summary.total_bpd_stderr
        return [f"  ODE likelihood {summary.total_bpd:.5f} bits/dim" + (f" +- {se:.5f}" if se is not None else ""),
                f"  prior          {summary.prior_bpd:.5f}",
                f"  divergence     {summary.divergence_bpd:.5f}",
                f"  dequantization {summary.dequantization_bpd:.5f}",
                f"  {summary.nfe_mean:.0f} network evaluations per image and draw "
                f"({summary.ode['divergence']} divergence, rtol {summary.ode['rtol']:g})"]

    @classmethod
    def comparable(cls, summary: NllSummary) -> dict:
        o = summary.ode
        return {**super().comparable(summary), "dequantization": o["dequantization"], "rtol": o["rtol"],
                "atol": o["atol"]}
