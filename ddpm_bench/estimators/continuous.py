"""The continuous-time bound (`nll --continuous`): VDM's bound of any model, in gamma = -log SNR, with its
prior, reconstruction and diffusion parts per image (ddpm_bench/continuous_bound.py; docs/likelihood.md).

Per image j and draw d of K: gamma from the proposal at the stratified point of d (uniform in gamma by
default; with `--proposal` an earlier continuous output, or `--pilot N` a uniform pilot on the first N
images with PILOT_DRAWS draws each: the root mean square of the integrand per bin, always mixed with
`uniform_share` of the uniform), eps and the reconstruction's eps0 from (seed, j, d). The diffusion part is
the mean over d of (1/2) ||eps - eps_hat||^2 / q(gamma): unbiased, and its standard error over images
holds the draws' noise. For a discrete DDPM (noise_input "index") it is the bound of the continuous-time
model its network defines over [gamma_0, gamma_{T-1}], at fractional indices: a different quantity from
the discrete bound (`nll`), shown beside it and never compared with it (`gap` refuses).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ddpm_bench import distributed, run_dir
from ddpm_bench.arguments import given, named
from ddpm_bench.continuous_bound import (
    BINS,
    PURPOSE_DIFFUSION_NOISE,
    PURPOSE_GAMMA,
    PURPOSE_PILOT_DIFFUSION_NOISE,
    PURPOSE_PILOT_GAMMA,
    PURPOSE_RECONSTRUCTION_NOISE,
    DiscreteSteps,
    GammaProposal,
    diffusion_integrand,
    keys,
    prior_nats,
    reconstruction_nats,
    to_bits_per_dim,
)
from ddpm_bench.data import ImageSet
from ddpm_bench.errors import ModelOutputError, UserError
from ddpm_bench.estimators.base import Estimator, Progress, check_between_steps
from ddpm_bench.network import Network
from ddpm_bench.noise import MAX_DRAWS, check_draws, check_seed, counter_normal
from ddpm_bench.outputs import (
    PER_IMAGE_FILE,
    NllOutput,
    NllSummary,
    OutputFileError,
    check_same_run,
    per_image_columns,
    read_npz,
    stderr_of_mean,
)
from ddpm_bench.shards import atomic_write_npz
from ddpm_bench.variational_bound import to_model_scale

PILOT_DRAWS = 64  # uniform draws per image of a pilot
MAX_STEPS = 1_000_000  # discrete-time steps beyond this cannot be meant (VDM: T = 0, continuous, or up to 1000s)
PROPOSAL_FILE = "proposal.npz"  # the pilot's bin weights, kept for a resume (items: the bins)


@dataclass(frozen=True)
class ContinuousOptions:
    """The continuous-time bound; each field's `help` is its flag's."""

    seed: int = 0
    draws: int = field(default=16, metadata={"help": "gamma draws per image, stratified (the continuous bound)"})
    proposal: str | NllOutput | None = None  # an earlier output of this estimator: its draws set q
    pilot: int = field(default=0, metadata={
        "metavar": "N", "help": "the continuous bound: q from a uniform pilot of 64 draws on the first N images "
                                "(0: uniform in gamma, or --proposal)"})
    uniform_share: float = field(default=0.1, metadata={
        "help": "the continuous bound: the uniform's share of a non-uniform proposal (keeps every gamma drawn)"})
    steps: int = field(default=0, metadata={
        "metavar": "T", "help": "the continuous bound: 0 for continuous time; T for VDM's discrete-time bound of the "
                                "same network with T steps over its range (approaching the continuous one as T grows)"})

    def __post_init__(self) -> None:
        check_seed(self.seed)
        check_draws(self.draws)
        if isinstance(self.pilot, bool) or not isinstance(self.pilot, int) or not 0 <= self.pilot <= MAX_DRAWS:
            raise UserError(f"{named('pilot')} must lie in 0..{MAX_DRAWS}, got {self.pilot!r}")
        share = self.uniform_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise UserError(f"{named('uniform_share')} must lie in (0, 1], got {share!r}")
        if self.proposal is not None and self.pilot:
            raise UserError(f"{named('proposal')} and {named('pilot')} both set the proposal: give one")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 0 <= self.steps <= MAX_STEPS:
            raise UserError(f"{named('steps')} must lie in 0..{MAX_STEPS} (0: continuous time), got {self.steps!r}")
        if self.steps and (self.proposal is not None or self.pilot):
            raise UserError(f"{named('steps')}T draws its steps uniformly: {named('proposal')} and {named('pilot')} "
                            "go with the continuous-time bound (steps 0)")
        if self.proposal is not None and not isinstance(self.proposal, (str, NllOutput)):
            raise UserError(f"{named('proposal')} must be a continuous-bound output (its directory, or the result in "
                            f"memory), got {type(self.proposal).__name__}")


@dataclass(frozen=True, kw_only=True)
class ContinuousSummary(NllSummary):
    """The continuous bound's parts (bits/dim; their sum is `total_bpd`), its range and its proposal."""

    prior_bpd: float
    reconstruction_bpd: float
    diffusion_bpd: float
    gamma_min: float
    gamma_max: float
    draws: int
    steps: int = 0  # 0: continuous time; T: VDM's discrete-time bound with T steps over the range
    continuous: dict  # the options (the proposal by where it came from) and the proposal itself

    def steps_text(self) -> str:
        """Its own time, whatever the network's T: continuous, or VDM's T steps."""
        return f"VDM's {self.steps} steps" if self.steps else "continuous time"


@dataclass(frozen=True)
class ContinuousPerImage:
    """`per_image.npz` of the continuous bound: each image's `bpd` and parts, its draws' `gamma` and
    `integrand` (nats, before the 1/q weight) (N, K), `index` and `run_id`."""

    FILE: ClassVar[str] = PER_IMAGE_FILE
    PARTS: ClassVar[tuple[str, ...]] = ("bpd", "prior_bpd", "reconstruction_bpd", "diffusion_bpd")
    DRAWS: ClassVar[tuple[str, ...]] = ("gamma", "integrand")

    bpd: np.ndarray
    prior_bpd: np.ndarray
    reconstruction_bpd: np.ndarray
    diffusion_bpd: np.ndarray
    gamma: np.ndarray
    integrand: np.ndarray
    index: np.ndarray
    run_id: str

    @property
    def totals(self) -> np.ndarray:
        return self.bpd

    def means(self) -> dict[str, np.ndarray]:
        return {"total_bpd": self.bpd, "prior_bpd": self.prior_bpd, "reconstruction_bpd": self.reconstruction_bpd,
                "diffusion_bpd": self.diffusion_bpd}

    def write(self, folder: str | Path) -> list[str]:
        atomic_write_npz(Path(folder) / self.FILE, **{k: getattr(self, k) for k in (*self.PARTS, *self.DRAWS)},
                         index=self.index.astype(np.int64), run_id=np.array(self.run_id))
        return [self.FILE]

    @classmethod
    def read(cls, folder: str | Path, summary: NllSummary | None = None) -> ContinuousPerImage:
        path = Path(folder) / cls.FILE
        got = read_npz(path, (*cls.PARTS, *cls.DRAWS, "index", "run_id"))
        run_id = str(got.pop("run_id"))
        n = per_image_columns(path, got, cls.PARTS)
        for k in cls.DRAWS:
            a = got[k]
            if a.dtype != np.float64 or a.ndim != 2 or a.shape[0] != n or not np.all(np.isfinite(a)):
                raise OutputFileError(f"{path}: field '{k}' must be finite float64 (N, K), got {a.dtype} {a.shape}")
        check_same_run(path, run_id, n, summary)
        return cls(**got, run_id=run_id)


class Continuous(Estimator):
    NAME = "continuous"
    QUANTITY = "bound"
    COLUMN = "continuous"  # another estimand than the discrete bound: its own columns
    OPTIONS = ContinuousOptions
    FLAG = ("--continuous", "the continuous-time bound (VDM) of the model: prior, reconstruction and diffusion "
                            "parts, gamma drawn per image")
    SHARD_KEYS = ("bpd", "prior_bpd", "reconstruction_bpd", "diffusion_bpd", "gamma", "integrand", "seconds")
    SUMMARY = ContinuousSummary
    PER_IMAGE = ContinuousPerImage

    def __init__(self, options: ContinuousOptions):
        super().__init__(options)
        self.range: tuple[float, float] | None = None
        self.q: GammaProposal | None = None
        self.source: dict = {"from": "uniform"}
        self.prior: NllOutput | None = None
        self._pilot_seconds = 0.0
        self._pilot_evals = 0

    # -- before the run ---------------------------------------------------------------------------------------

    def check(self, network: Network, images: ImageSet) -> None:
        if not network.convention.continuous:
            check_between_steps(network, "the continuous bound", "the bound")
        try:
            self.range = network.gamma_range()
        except ValueError as e:
            raise UserError(f"the continuous bound: the model's noise levels: {e}") from None
        if self.options.pilot > len(images):
            raise UserError(f"{given('pilot', self.options.pilot)}: more than the {len(images)} images")

    def prepare(self, network: Network, images: ImageSet) -> dict:
        """Where q comes from: uniform, an earlier continuous output (by its run id), or the pilot."""
        o = self.options
        gmin, gmax = self.range
        if o.proposal is not None:
            prior = o.proposal if isinstance(o.proposal, NllOutput) else Continuous.read(o.proposal)
            what = given("proposal", o.proposal if isinstance(o.proposal, str) else prior)
            if prior.summary.estimator != self.NAME:
                raise UserError(f"{what}: is an output of the {prior.summary.estimator!r} estimator; the proposal "
                                "comes from a continuous bound")
            if (prior.summary.gamma_min, prior.summary.gamma_max) != (gmin, gmax):
                raise UserError(f"{what}: drew gamma over [{prior.summary.gamma_min}, {prior.summary.gamma_max}], "
                                f"this model's range is [{gmin}, {gmax}]")
            self.prior = prior
            self.source = {"from": "nll output", "run_id": prior.summary.run_id, "model": prior.summary.model_sha256}
        elif o.pilot:
            self.source = {"from": "pilot", "images": images.index[:o.pilot].tolist(), "draws": PILOT_DRAWS}
        return {"proposal": self.source}

    def identity(self) -> dict:
        return {f.name: getattr(self.options, f.name) for f in fields(self.options) if f.name != "proposal"}

    def setup(self, network: Network, images: ImageSet, run, batch_size: int) -> None:
        """q, the same on every rank: uniform, from the earlier output's draws, or from the pilot (rank 0
        computes it into OUT/proposal.npz, checked like a shard, read back by every rank)."""
        o = self.options
        gmin, gmax = self.range
        if o.steps:
            self.q = DiscreteSteps(step_grid(network, o.steps))
            return
        if self.prior is not None:
            p = self.prior.per_image
            self.q = GammaProposal.from_draws(gmin, gmax, torch.from_numpy(p.gamma), torch.from_numpy(p.integrand),
                                              o.uniform_share)
            return
        if not o.pilot:
            self.q = GammaProposal.uniform(gmin, gmax)
            return
        bins = torch.arange(BINS, dtype=torch.int64)
        if run is None:
            w, self._pilot_seconds = self._pilot(network, images, batch_size)
        else:
            with run_dir.phase():
                if distributed.is_main() and not run.shard_is_valid(PROPOSAL_FILE, bins.numpy(), ("w", "seconds")):
                    w, seconds = self._pilot(network, images, batch_size)
                    run.write_shard(PROPOSAL_FILE, bins.numpy(), w=w.numpy(), seconds=np.full(BINS, seconds / BINS))
            with run_dir.phase():
                got = run.read_shard(PROPOSAL_FILE, bins.numpy(), ("w", "seconds"))
            w, self._pilot_seconds = torch.from_numpy(got["w"]), float(got["seconds"].sum())
        self.q = GammaProposal(gmin, gmax, w)
        self._pilot_evals = o.pilot * PILOT_DRAWS

    def _pilot(self, network: Network, images: ImageSet, batch_size: int) -> tuple[torch.Tensor, float]:
        t0 = time.perf_counter()
        gmin, gmax = self.range
        n = self.options.pilot
        x = torch.from_numpy(images.images[:n]).permute(0, 3, 1, 2)
        index = torch.from_numpy(images.index[:n])
        got = self._draws(network, x, index, GammaProposal.uniform(gmin, gmax), PILOT_DRAWS, batch_size, None,
                          pilot=True)
        q = GammaProposal.from_draws(gmin, gmax, got["gamma"], got["integrand"], self.options.uniform_share)
        return q.weights, time.perf_counter() - t0

    # -- the work ---------------------------------------------------------------------------------------------

    def evaluations_per_image(self, T: int) -> int:
        return self.options.draws

    def cost(self, n_images: int, T: int) -> tuple[int, str]:
        K = self.options.draws
        evals, what = n_images * K, f"{K} gamma draws"
        if self.options.pilot:
            evals += self.options.pilot * PILOT_DRAWS
            what += f" + a pilot of {self.options.pilot} images x {PILOT_DRAWS} draws"
        return evals, what

    def label(self) -> str:
        steps = f", {self.options.steps} steps" if self.options.steps else ""
        return f"the continuous bound ({self.options.draws} draws per image{steps})"

    def setup_evaluations(self) -> int:
        return self._pilot_evals

    def setup_seconds(self) -> float:
        return self._pilot_seconds

    def _draws(self, network: Network, images: torch.Tensor, index: torch.Tensor, q: GammaProposal, K: int,
               batch_size: int, progress: Progress | None, pilot: bool = False) -> dict[str, torch.Tensor]:
        """The K draws of every image: gamma (n, K), the integrand (1/2) ||eps - eps_hat||^2 (n, K) (nats),
        its weight 1 / q(gamma) (n, K); (image, draw) pairs sent `batch_size` at a time through the network.
        A pilot's draws take noise of their own (the proposal they make must not depend on the run's)."""
        dev = network.device
        n, shape = images.shape[0], tuple(images.shape[1:])
        x = to_model_scale(images.to(dev))
        purpose_gamma, purpose_noise = (PURPOSE_PILOT_GAMMA, PURPOSE_PILOT_DIFFUSION_NOISE) if pilot else \
            (PURPOSE_GAMMA, PURPOSE_DIFFUSION_NOISE)
        gamma, weight = (v.to(dev) for v in q.sample(self.options.seed, index, K, purpose_gamma))
        levels = None if network.convention.continuous else network.discrete_levels()
        pairs_key = keys(index.to(dev), purpose_noise, K)
        flat_gamma = gamma.reshape(-1)
        integrand = torch.empty(n * K, dtype=torch.float64, device=dev)
        for start in range(0, n * K, batch_size):
            sl = slice(start, min(start + batch_size, n * K))
            j = torch.arange(sl.start, sl.stop, device=dev) // K
            g = flat_gamma[sl]
            eps = counter_normal(self.options.seed, pairs_key[sl], shape).to(dev)
            a, s = torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()
            z = a.reshape(-1, 1, 1, 1) * x[j] + s.reshape(-1, 1, 1, 1) * eps
            with torch.no_grad():
                eps_hat = network.eps(z, g, levels)
            if not bool(torch.isfinite(eps_hat).all()):
                raise ModelOutputError("the model's eps prediction has non-finite values")
            integrand[sl] = diffusion_integrand(eps, eps_hat)
            if progress is not None:
                progress(sl.stop - sl.start)
        integrand = integrand.reshape(n, K)
        return {"gamma": gamma, "integrand": integrand, "weight": weight}

    def compute(self, network: Network, images: torch.Tensor, index: torch.Tensor, *, batch_size: int,
                progress: Progress | None) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        o, (gmin, gmax) = self.options, self.range
        n, K = images.shape[0], o.draws
        D = math.prod(images.shape[1:])
        got = self._draws(network, images, index, self.q, K, batch_size, progress)
        diffusion = (got["integrand"] * got["weight"]).mean(1).cpu()
        x = to_model_scale(images)
        prior = prior_nats(x, gmax)
        eps0 = counter_normal(o.seed, keys(index, PURPOSE_RECONSTRUCTION_NOISE, K), tuple(images.shape[1:]))
        eps0 = eps0.reshape(n, K, *images.shape[1:])
        recon = torch.stack([reconstruction_nats(images, eps0[:, d], gmin) for d in range(K)], dim=1).mean(1)
        parts = {"prior_bpd": to_bits_per_dim(prior, D), "reconstruction_bpd": to_bits_per_dim(recon, D),
                 "diffusion_bpd": to_bits_per_dim(diffusion, D)}
        total = parts["prior_bpd"] + parts["reconstruction_bpd"] + parts["diffusion_bpd"]
        return {"bpd": total.numpy(), **{k: v.numpy() for k, v in parts.items()},
                "gamma": got["gamma"].cpu().numpy(), "integrand": got["integrand"].cpu().numpy(),
                "seconds": np.full(n, (time.perf_counter() - t0) / n)}

    def network_evals(self, merged: dict[str, np.ndarray], T: int) -> int:
        return int(merged["bpd"].shape[0]) * self.options.draws + self._pilot_evals

    def finish(self, merged: dict[str, np.ndarray], common: dict) -> NllOutput:
        o, (gmin, gmax) = self.options, self.range
        per_image = ContinuousPerImage(**{k: merged[k] for k in (*ContinuousPerImage.PARTS, *ContinuousPerImage.DRAWS)},
                                       index=merged["index"], run_id=common["run_id"])
        bpd = merged["bpd"]
        settings = {**self.identity(), "proposal": {**self.source, **self.q.to_dict()},
                    "gamma": "gamma = -log SNR; alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma)",
                    "decoder": "VDM: per dimension a categorical over 0..255 of N(z_0; alpha_0 x(v), sigma_0^2)"}
        summary = ContinuousSummary(**common, total_bpd=float(bpd.mean()), total_bpd_stderr=stderr_of_mean(bpd),
                                    prior_bpd=float(merged["prior_bpd"].mean()),
                                    reconstruction_bpd=float(merged["reconstruction_bpd"].mean()),
                                    diffusion_bpd=float(merged["diffusion_bpd"].mean()), gamma_min=gmin,
                                    gamma_max=gmax, draws=o.draws, steps=o.steps, continuous=settings)
        return NllOutput(None, summary, per_image)

    @classmethod
    def summary_lines(cls, summary: ContinuousSummary) -> list[str]:
        se = summary.total_bpd_stderr
        what = "continuous bound" if not summary.steps else f"{summary.steps}-step bound"
        return [f"  {what:16s} {summary.total_bpd:.5f} bits/dim" + (f" +- {se:.5f}" if se is not None else ""),
                f"  prior            {summary.prior_bpd:.3e}",
                f"  reconstruction   {summary.reconstruction_bpd:.5f}",
                f"  diffusion        {summary.diffusion_bpd:.5f}",
                f"  gamma in [{summary.gamma_min:.4g}, {summary.gamma_max:.4g}], {summary.draws} draws per image "
                f"({summary.continuous['proposal']['from']})"]

    @classmethod
    def comparable(cls, summary: NllSummary) -> dict:
        """A continuous bound compares only with a continuous bound over the same range: another quantity
        than the discrete bound, whatever both are called."""
        return {**super().comparable(summary), "estimand": "continuous-time bound",
                "gamma_range": [summary.gamma_min, summary.gamma_max], "steps": summary.steps}

    @classmethod
    def column(cls, summary: NllSummary) -> str:
        """The continuous bound's own columns; VDM's T-step bound has none in Table 1 (another estimand)."""
        return cls.COLUMN if not summary.steps else f"{summary.steps}-step bound (VDM)"


def step_grid(network: Network, T: int) -> torch.Tensor:
    """(T + 1,) gamma on the steps of VDM's discrete-time bound: a "t" model's own schedule at equal steps
    of t over its range; any other model's range at equal steps of gamma (VDM's fixed linear schedule)."""
    c = network.convention
    if c.noise_input == "t":
        sched = c.time_schedule()
        t = torch.linspace(sched.t_min, sched.t_max, T + 1, dtype=torch.float64)
        return sched.gamma(t)
    gmin, gmax = network.gamma_range()
    return torch.linspace(gmin, gmax, T + 1, dtype=torch.float64)
