"""The variational bound of DDPM, per image and per term, in bits/dim (float64).

L = L_T + sum_{k=1}^{T-1} L_k + L_0 (Ho et al. 2020, Eq. 5):
  L_T = KL(q(x_T | x_0) || N(0, I))                          (closed form, no network)
  L_k = KL(q(x_k | x_{k+1}, x_0) || p(x_k | x_{k+1}))        k = 1..T-1, network index i = k
  L_0 = -log p(x_0 | x_1)                                    discretised decoder, Eq. 13
Each of L_0..L_{T-1} uses its own draw x_{k+1} ~ q(x_{k+1} | x_0) whose noise is a pure function of
(seed, dataset index j, term k, draw d), so a result does not depend on batch size, order or sharding.

The engine flattens (image, draw, term) into pairs and sends `batch_size` pairs through the network per
call: the official loop calls it T times on a batch of images at one timestep; here any mix of images and
timesteps shares a call, so small data sets and the last partial batch still fill the network.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ddpm_bench.arguments import flag, given, named
from ddpm_bench.diffusion import (
    DiffusionConfig,
    extract,
    p_logvar_x0,
    q_mean_logvar,
    q_posterior_logvar,
    q_posterior_mean,
    q_sample,
)
from ddpm_bench.errors import ModelOutputError, UserError
from ddpm_bench.gaussian import (
    DECODER_CDF_MODES,
    discretized_gaussian_log_likelihood,
    normal_kl,
    normal_kl_of_gap,
)
from ddpm_bench.network import Network
from ddpm_bench.noise import MAX_DRAWS, check_draws, check_seed, counter_normal
from ddpm_bench.outputs import NllOutput
from ddpm_bench.schedule import Schedule

LN2 = math.log(2.0)
# (image, term) pairs per network call when no batch size is given, by device type, for 32x32x3 images
# (measured: benchmarks/RESULTS.md, "pairs per call"). Other image sizes keep the number of values per call
# (pairs x C x H x W): what the engine's own work per call scales with, and what fits the caches of a CPU
# and the memory of a GPU.
PAIRS_PER_CALL = {"cpu": 32, "cuda": 256}
PAIRS_PER_CALL_DIMS = 3 * 32 * 32


def default_pairs_per_call(device: torch.device, image_shape: tuple[int, ...] = (3, 32, 32)) -> int:
    dims = math.prod(image_shape)
    return max(1, PAIRS_PER_CALL.get(device.type, 256) * PAIRS_PER_CALL_DIMS // dims)


def _check_decoder_cdf(decoder_cdf: str) -> None:
    if decoder_cdf not in DECODER_CDF_MODES:
        raise UserError(f"{given('decoder_cdf', decoder_cdf)}: choose from {', '.join(DECODER_CDF_MODES)}")


@dataclass(frozen=True)
class BoundOptions:
    """Everything besides the model, its precision and the data that changes the exact bound's numbers.
    Each field's `help` is its command-line flag's."""

    seed: int = field(default=0, metadata={"help": "all noise of image j (for term k and draw d) is a pure function "
                                                   "of (seed, j, k, d)"})
    draws: int = field(default=1, metadata={"help": "independent draws averaged per image (of x_{k+1} per term for "
                                                    "the bound; of dequantization and probe for --ode)"})
    clip: bool = field(default=True, metadata={
        "help": "clip the x0 prediction to [-1, 1] before forming the mean (official bound loop)"})
    decoder_cdf: str = field(default="exact", metadata={
        "choices": DECODER_CDF_MODES,
        "help": "exact: log-space normal CDF; tanh: the official code's approximation with a 1e-12 floor"})

    def __post_init__(self) -> None:
        check_seed(self.seed)
        check_draws(self.draws)
        flag("clip", self.clip)
        _check_decoder_cdf(self.decoder_cdf)


@dataclass(frozen=True)
class ImportanceOptions:
    """The importance-sampled bound: K of the T - 1 KL terms per image drawn from a proposal q fixed before
    the run (from `proposal`, an exact nll output of the same model, or from an exact pilot)."""

    terms: int = field(default=25, metadata={
        "metavar": "K", "help": "evaluate L_0 and K of the T-1 KL terms per image, drawn from a proposal q and "
                                "weighted by 1/(K q(k)): an unbiased estimate of the exact bound"})
    seed: int = 0
    clip: bool = True
    decoder_cdf: str = "exact"
    proposal: str | NllOutput | None = field(default=None, metadata={
        "metavar": "NLL_DIR", "help": "an exact nll output of the same model whose per-term root-mean-square sets "
                                      "q (default: an exact pilot on the first 4 images, counted in network_evals)"})

    def __post_init__(self) -> None:
        check_seed(self.seed)
        flag("clip", self.clip)
        if self.proposal is not None and not isinstance(self.proposal, (str, NllOutput)):
            if isinstance(self.proposal, os.PathLike):
                object.__setattr__(self, "proposal", os.fspath(self.proposal))
            else:
                raise UserError(f"{named('proposal')} must be an exact nll output (its directory, or the result in "
                                f"memory), got {type(self.proposal).__name__}")
        if isinstance(self.terms, bool) or not isinstance(self.terms, int) or not 1 <= self.terms <= MAX_DRAWS:
            raise UserError(f"{named('terms')} must lie in 1..{MAX_DRAWS} (and below T), got {self.terms!r}")
        _check_decoder_cdf(self.decoder_cdf)

    @property
    def draws(self) -> int:
        return 1


def to_model_scale(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) in 0..255 -> float64 x = v / 127.5 - 1 in [-1, 1]."""
    return images.to(torch.float64) / 127.5 - 1.0


def mean_bits_per_dim(nats: torch.Tensor) -> torch.Tensor:
    """Elementwise nats (N, ...) -> (N,) bits/dim: sum over dims / (D ln 2)."""
    return nats.flatten(1).mean(1) / LN2


def prior_bpd(s: Schedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, (N,), closed form."""
    i = torch.full((x0.shape[0],), s.T - 1, dtype=torch.long, device=x0.device)
    mean, logvar = q_mean_logvar(s, x0, i)
    return mean_bits_per_dim(normal_kl(mean, logvar, torch.zeros_like(mean), torch.zeros_like(mean)))


@dataclass(frozen=True)
class TermValues:
    bpd: torch.Tensor  # (P,) float64: decoder NLL where i == 0, else the KL term, bits/dim
    mse: torch.Tensor  # (P,) float64: mean over dims of (x0_hat - x0)^2 in model scale


def term_values(cfg: DiffusionConfig, s: Schedule, output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor,
                i: torch.Tensor, clip: bool = True, decoder_cdf: str = "exact") -> TermValues:
    """L_i for pairs (x_0, x_{i+1}) given the network output at x_{i+1}: the decoder NLL for i = 0, the
    KL from the true posterior for i >= 1 (official `_vb_terms_bpd`), and the x0 prediction error."""
    model_out, logvar, x0_hat = p_logvar_x0(cfg, s, output, xt, i, clip=clip)
    sq_err = (x0_hat - x0) ** 2
    mse = sq_err.flatten(1).mean(1)
    bpd = torch.empty(x0.shape[0], dtype=torch.float64, device=x0.device)

    def model_mean(rows: torch.Tensor) -> torch.Tensor:  # p_mean_logvar's mean, of these rows only
        if cfg.mean_type == "mu":
            return model_out[rows]
        return q_posterior_mean(s, x0_hat[rows], xt[rows], i[rows])

    dec = i == 0
    if dec.any():
        log_scales = 0.5 * logvar.expand_as(x0)[dec]
        ll = discretized_gaussian_log_likelihood(x0[dec], model_mean(dec), log_scales, cdf=decoder_cdf)
        bpd[dec] = -mean_bits_per_dim(ll)
    kl = ~dec
    if kl.any():
        ik = i[kl]
        true_logvar = q_posterior_logvar(s, ik, x0.ndim)
        model_logvar = logvar[kl]
        if cfg.mean_type == "mu":  # the network's mean as it is
            true_mean = q_posterior_mean(s, x0[kl], xt[kl], ik)
            bpd[kl] = mean_bits_per_dim(normal_kl(true_mean, true_logvar, model_mean(kl), model_logvar))
        else:  # both means are c1 x0 + c2 x_t (Eq. 7): their gap is c1 (x0 - x0_hat), the x_t part cancels
            c1_sq = extract(s.posterior_mean_coef1, ik, x0.ndim) ** 2
            if model_logvar.flatten(1).shape[1] == 1:  # a fixed variance: the KL's mean over dims, per row
                nats = normal_kl_of_gap(c1_sq.flatten() * mse[kl], true_logvar.flatten(), model_logvar.flatten())
            else:
                nats = normal_kl_of_gap(c1_sq * sq_err[kl], true_logvar, model_logvar).flatten(1).mean(1)
            bpd[kl] = nats / LN2
    return TermValues(bpd=bpd, mse=mse)


@dataclass(frozen=True)
class BoundTerms:
    terms: torch.Tensor  # (N, T + 1) float64 bits/dim; column k = L_k, column T = L_T
    mse: torch.Tensor  # (N, T) float64; column k = x0-prediction error from x_{k+1}, averaged over draws
    drawn: torch.Tensor | None = None  # (N, T + 1) int64 times each term was drawn (importance sampling)


def check_finite(output: torch.Tensor, i: torch.Tensor, index: torch.Tensor) -> None:
    """A network output with NaN/Inf is a ModelOutputError naming the terms and images."""
    if bool(torch.isfinite(output).all()):  # one reduction; the rows are named only when one is bad
        return
    bad = ~torch.isfinite(output.flatten(1)).all(1)
    terms = sorted(set(i[bad].tolist()))
    images = sorted(set(index[bad].tolist()))
    raise ModelOutputError(f"model returned NaN/Inf for term(s) {_short(terms)} of image(s) {_short(images)}")


def _short(values: list[int], n: int = 6) -> str:
    return ", ".join(map(str, values[:n])) + (f", ... ({len(values)} in all)" if len(values) > n else "")


def bound_pairs(
    net: Network,
    s: Schedule,
    x0_all: torch.Tensor,  # (N, C, H, W) float64 model scale
    index: torch.Tensor,  # (N,) int64 dataset indices: the noise key
    n: torch.Tensor,  # (P,) int64 rows of x0_all
    d: torch.Tensor,  # (P,) int64 draw numbers
    k: torch.Tensor,  # (P,) int64 terms = network indices
    *,
    seed: int = 0,
    clip: bool = True,
    decoder_cdf: str = "exact",
) -> TermValues:
    """L_k of P (image, draw, term) pairs with one network call: draw x_{k+1} ~ q(x_{k+1} | x_0) from the
    counter noise of (index[n], k, d), evaluate the network on it, and form the term in float64."""
    x0 = x0_all[n]
    noise = counter_normal(seed, torch.stack([index[n], k, d], dim=1), tuple(x0.shape[1:]))
    # the network sees float32; the bound uses exactly that x_{k+1}, so both agree on the draw
    xt32 = q_sample(s, x0, k, noise).to(torch.float32)
    with torch.inference_mode():
        output = net(xt32, k)
    check_finite(output, k, index[n])
    return term_values(net.diffusion, s, output.to(torch.float64), x0, xt32.to(torch.float64), k, clip=clip,
                       decoder_cdf=decoder_cdf)


def compute_bound(
    net: Network,
    images: torch.Tensor,  # (N, C, H, W) uint8
    index: torch.Tensor,  # (N,) int64 dataset indices: the noise key
    opts: BoundOptions = BoundOptions(),
    *,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> BoundTerms:
    """Every term of the bound for every image: N * draws * T network evaluations in calls of
    `batch_size` (image, draw, term) pairs, on the network's device."""
    device = net.device
    s = net.diffusion.schedule().to(device)
    N, T = images.shape[0], s.T
    x0_all = to_model_scale(images.to(device))
    draws = opts.draws
    per_draw = torch.zeros(N, draws, T, dtype=torch.float64, device=device)
    mse = torch.zeros(N, draws, T, dtype=torch.float64, device=device)
    index = index.to(device=device, dtype=torch.int64)
    total = N * draws * T
    for start in range(0, total, batch_size):
        flat = torch.arange(start, min(start + batch_size, total), device=device)
        n, d, k = flat // (draws * T), (flat // T) % draws, flat % T
        values = bound_pairs(net, s, x0_all, index, n, d, k, seed=opts.seed, clip=opts.clip,
                             decoder_cdf=opts.decoder_cdf)
        per_draw[n, d, k] = values.bpd
        mse[n, d, k] = values.mse
        if progress is not None:
            progress(len(flat))
    terms = torch.cat([per_draw.mean(1), prior_bpd(s, x0_all)[:, None]], dim=1)
    return BoundTerms(terms=terms, mse=mse.mean(1))


# -- the importance-sampled bound -------------------------------------------

PROPOSAL_UNIFORM_SHARE = 0.05  # the part of q spread evenly over all KL terms: every q(k) > 0, so no bias
PURPOSE_TERM_DRAW = -1  # the noise key (j, -1, 0) gives the uniform of image j's term draws


def term_proposal(terms: np.ndarray, uniform_share: float = PROPOSAL_UNIFORM_SHARE) -> np.ndarray:
    """q(k) over the KL terms k = 1..T-1, (T-1,) float64, from per-image terms (N, T+1) of an exact bound:
    proportional to each term's root-mean-square over images (the variance-minimising choice for a
    single term's contribution), mixed with `uniform_share` of the uniform distribution."""
    rms = np.sqrt(np.mean(np.asarray(terms, dtype=np.float64)[:, 1:-1] ** 2, axis=0))
    T1 = rms.shape[0]
    base = rms / rms.sum() if rms.sum() > 0 else np.full(T1, 1.0 / T1)
    return (1.0 - uniform_share) * base + uniform_share / T1


def draw_terms(seed: int, index: torch.Tensor, q: np.ndarray, K: int) -> np.ndarray:
    """(N, K) int64 KL terms in 1..T-1 for the images with data-set indices `index`: systematic sampling
    from q (points (u_j + i) / K, i = 0..K-1, each marginally distributed as q) with u_j a pure function of
    (seed, index j). Sorted within each row."""
    keys = torch.stack([index.cpu(), torch.full_like(index.cpu(), PURPOSE_TERM_DRAW), torch.zeros_like(index.cpu())], 1)
    u = torch.special.ndtr(counter_normal(seed, keys, (1,))).numpy()[:, 0]  # (N,) uniform in (0, 1)
    points = (u[:, None] + np.arange(K)[None, :]) / K
    cdf = np.cumsum(q)
    cdf[-1] = 1.0
    return np.searchsorted(cdf, points, side="right").astype(np.int64) + 1


def estimate_bound(
    net: Network,
    images: torch.Tensor,  # (N, C, H, W) uint8
    index: torch.Tensor,  # (N,) int64 dataset indices: the noise and term-draw key
    opts: ImportanceOptions,
    q: np.ndarray,  # (T-1,) float64 proposal over the KL terms k = 1..T-1
    *,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> BoundTerms:
    """The importance-sampled bound: per image L_T in closed form, L_0 evaluated, and K = opts.terms KL
    terms drawn from q, each weighted by 1 / (K q(k)); `terms[:, k]` holds the weighted sum of the draws of
    term k (0 where it was not drawn), so every row sums to an unbiased estimate of the image's bound and
    every column's mean to one of the term's mean. A term drawn twice for one image gets a fresh x_{k+1}
    (draw number = its occurrence). N * (K + 1) network evaluations."""
    device = net.device
    s = net.diffusion.schedule().to(device)
    N, T, K = images.shape[0], s.T, opts.terms
    x0_all = to_model_scale(images.to(device))
    index = index.to(device=device, dtype=torch.int64)
    ks = draw_terms(opts.seed, index, q, K)  # (N, K)
    occurrence = np.zeros_like(ks)
    for c in range(1, K):
        occurrence[:, c] = np.where(ks[:, c] == ks[:, c - 1], occurrence[:, c - 1] + 1, 0)
    n_all = torch.arange(N, device=device).repeat_interleave(K + 1)
    k_all = torch.from_numpy(np.concatenate([np.zeros((N, 1), np.int64), ks], 1).reshape(-1)).to(device)
    d_all = torch.from_numpy(np.concatenate([np.zeros((N, 1), np.int64), occurrence], 1).reshape(-1)).to(device)
    values = torch.empty(N * (K + 1), dtype=torch.float64, device=device)
    errors = torch.empty(N * (K + 1), dtype=torch.float64, device=device)
    for start in range(0, len(n_all), batch_size):
        sl = slice(start, start + batch_size)
        v = bound_pairs(net, s, x0_all, index, n_all[sl], d_all[sl], k_all[sl], seed=opts.seed, clip=opts.clip,
                        decoder_cdf=opts.decoder_cdf)
        values[sl], errors[sl] = v.bpd, v.mse
        if progress is not None:
            progress(len(n_all[sl]))
    values, errors = values.view(N, K + 1), errors.view(N, K + 1)
    qk = torch.from_numpy(q).to(device)[torch.from_numpy(ks).to(device) - 1]  # (N, K)
    rows = torch.arange(N, device=device)[:, None].expand(N, K)
    cols = torch.from_numpy(ks).to(device)
    terms = torch.zeros(N, T + 1, dtype=torch.float64, device=device)
    terms[:, 0] = values[:, 0]
    terms.index_put_((rows, cols), values[:, 1:] / (K * qk), accumulate=True)
    terms[:, T] = prior_bpd(s, x0_all)
    drawn = torch.zeros(N, T + 1, dtype=torch.int64, device=device)
    drawn[:, 0] = 1
    drawn[:, T] = 1
    drawn.index_put_((rows, cols), torch.ones_like(cols), accumulate=True)
    mse_sum = torch.zeros(N, T, dtype=torch.float64, device=device)
    mse_sum[:, 0] = errors[:, 0]
    mse_sum.index_put_((rows, cols), errors[:, 1:], accumulate=True)
    mse = torch.where(drawn[:, :T] > 0, mse_sum / drawn[:, :T].clamp(min=1), torch.nan)
    return BoundTerms(terms=terms, mse=mse, drawn=drawn)
