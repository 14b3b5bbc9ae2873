"""The reference trainer: DDPM Algorithm 1 with the paper's optimisation settings (Appendix B).

repeat: x_0 ~ q(x_0) (random horizontal flips), t ~ Uniform({1..T}), eps ~ N(0, I), gradient step on the
objective (losses.py) with Adam, linear learning-rate warm-up, global-norm gradient clipping and an EMA
of the parameters. The `L_vlb` objective draws t from its importance-sampling distribution instead
(resampler.py) and weights each term by 1 / (T p_t), so its expectation is that of the uniform `L`.

A continuous-time model (a `[noise]` table, objective `vdm`; VDM, Kingma et al. 2021) draws t in its
schedule's [t_min, t_max] instead, low-discrepancy over the global batch (VDM's t_i = (u0 + i / B) mod 1)
or uniform, diffuses to z_t = alpha x_0 + sigma eps at gamma(t), and calls the network with
`NoiseConvention.network_input(gamma)` (t * time_scale for a "t" model, gamma for a "gamma" model).

Every random choice of step s (the global batch, its timesteps, noise and flips, and the dropout masks)
comes from generators seeded by (seed, s) alone, so a run stopped and resumed from a checkpoint gives
exactly the parameters of one that never stopped, and the global batch is the same whatever the number
of processes: rank r of W takes rows [r B/W, (r+1) B/W) of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ddpm_bench.config import RunConfig
from ddpm_bench.diffusion import q_sample
from ddpm_bench.losses import diffuse, training_loss, vdm_diffusion_loss
from ddpm_bench.models.ema import EMA
from ddpm_bench.models.registry import build_model
from ddpm_bench.noise import mix64_int
from ddpm_bench.noise_level import NoiseConvention, VdmLinear
from ddpm_bench.resampler import LossSecondMomentResampler, draw_indices
from ddpm_bench.schedule import Schedule
from ddpm_bench.variational_bound import to_model_scale

# independent random streams of one step
STREAM_DATA, STREAM_DIFFUSION, STREAM_DROPOUT, STREAM_INIT = 1, 2, 3, 4


def stream_seed(seed: int, *keys: int) -> int:
    """A 63-bit generator seed that is a pure function of (seed, keys) (SplitMix64 chain)."""
    h = mix64_int(seed)
    for k in keys:
        h = mix64_int(h ^ (k & ((1 << 64) - 1)))
    return h >> 1


def learning_rate(step: int, lr: float, warmup: int) -> float:
    """lr * min(1, (step + 1) / warmup) for the update that ends step `step` + 1 (0-based `step`).
    (The official code uses step / warmup, so its first update has rate 0.)"""
    return lr if warmup == 0 else lr * min(1.0, (step + 1) / warmup)


def global_batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """(B,) dataset indices of step `step`: the data is visited in epochs, each a permutation seeded by
    (seed, epoch), and step s takes positions [s B, (s+1) B) of their concatenation."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, pos = divmod(start + len(out), n)
        perm = np.random.Generator(np.random.PCG64(stream_seed(seed, STREAM_DATA, epoch))).permutation(n)
        out.extend(perm[pos: pos + batch_size - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


@dataclass(frozen=True)
class StepRandomness:
    """The random choices of one step for the whole global batch: a discrete step `i`, or for a
    continuous-time model `u`, the position of t in [t_min, t_max]."""

    index: np.ndarray  # (B,) int64 dataset rows
    i: torch.Tensor | None  # (B,) int64 network indices i = t - 1, uniform on 0..T-1 (or drawn from p)
    noise: torch.Tensor  # (B, C, H, W) float32 eps ~ N(0, I)
    flip: torch.Tensor  # (B,) bool horizontal flips
    u: torch.Tensor | None = None  # (B,) float64 in [0, 1): t = t_min + (t_max - t_min) u (continuous time)


def continuous_times(g: torch.Generator, batch_size: int, sampling: str) -> torch.Tensor:
    """(B,) float64 u in [0, 1) of one step: "low-discrepancy" (VDM: u_i = (u0 + i / B) mod 1, one u0 ~ U[0, 1)
    per step, so the batch covers [0, 1) evenly) or "uniform" (independent)."""
    if sampling == "low-discrepancy":
        u0 = torch.rand((), generator=g, dtype=torch.float64)
        return torch.remainder(u0 + torch.arange(batch_size, dtype=torch.float64) / batch_size, 1.0)
    if sampling == "uniform":
        return torch.rand(batch_size, generator=g, dtype=torch.float64)
    raise ValueError(f"unknown time sampling {sampling!r}")


def step_randomness(seed: int, step: int, batch_size: int, n: int, T: int, shape: tuple[int, int, int],
                    random_flip: bool, p: torch.Tensor | None = None, time_sampling: str | None = None
                    ) -> StepRandomness:
    """The random choices of step `step`; `p` (T,) the timestep distribution, None for uniform;
    `time_sampling` (config.TIME_SAMPLINGS) draws continuous times instead of discrete steps."""
    g = torch.Generator().manual_seed(stream_seed(seed, STREAM_DIFFUSION, step))
    i = u = None
    if time_sampling is not None:
        u = continuous_times(g, batch_size, time_sampling)
    elif p is None:
        i = torch.randint(0, T, (batch_size,), generator=g, dtype=torch.int64)
    else:
        i = draw_indices(p, torch.rand(batch_size, generator=g, dtype=torch.float64))
    noise = torch.randn((batch_size, *shape), generator=g, dtype=torch.float32)
    flip = torch.rand(batch_size, generator=g) < 0.5
    if not random_flip:
        flip = torch.zeros_like(flip)
    return StepRandomness(global_batch_indices(seed, step, batch_size, n), i, noise, flip, u)


def training_time_schedule(convention: NoiseConvention):
    """The continuous schedule t -> gamma(t) a continuous-time model is trained on: a "t" model's own, a
    "gamma" model's gamma linear on [gamma_min, gamma_max] (VDM's fixed schedule over its range)."""
    if convention.noise_input == "t":
        return convention.time_schedule()
    if convention.noise_input == "gamma":
        return VdmLinear(gamma_min=convention.gamma_min, gamma_max=convention.gamma_max)
    raise ValueError(f"noise_input {convention.noise_input!r} is not trained by the reference trainer")


class Trainer:
    """Model, EMA, optimiser and step counter; `train_step` runs one step of Algorithm 1.

    `ddp_model` is the module the forward and backward go through (a DistributedDataParallel wrapper
    under torchrun, else the model itself); `rank`/`world` select this process's slice of the batch.
    """

    def __init__(self, cfg: RunConfig, images: torch.Tensor, schedule: Schedule, device: torch.device,
                 rank: int = 0, world: int = 1):
        tc = cfg.training
        if tc.batch_size % world:
            raise ValueError(f"training.batch_size {tc.batch_size} is not divisible by {world} processes")
        if tc.grad_clip_group and (tc.batch_size // world) % tc.grad_clip_group:
            raise ValueError(f"training.grad_clip_group {tc.grad_clip_group} does not divide the "
                             f"{tc.batch_size // world} images of each of {world} process(es)")
        self.cfg, self.images, self.device, self.rank, self.world = cfg, images, device, rank, world
        self.schedule = schedule.to(device)
        torch.manual_seed(stream_seed(tc.seed, STREAM_INIT))
        self.model = build_model(cfg.to_dict()["model"]).to(device)
        self.ema = EMA(self.model, tc.ema_decay)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=tc.lr)
        self.ddp_model: nn.Module = self.model
        self.step = 0  # number of completed steps
        # L_vlb's timestep distribution, and the global batch's (i, terms) that enter it when the step is applied
        self.resampler = LossSecondMomentResampler(cfg.diffusion.T) if tc.objective == "L_vlb" else None
        self._pending_terms: tuple[torch.Tensor, torch.Tensor] | None = None

    def local_rows(self) -> slice:
        b = self.cfg.training.batch_size // self.world
        return slice(self.rank * b, (self.rank + 1) * b)

    def local_batch(self, r: StepRandomness) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """This rank's rows: x_0 float64 (b, C, H, W) on the device, i (b,) (None for continuous time), eps
        float64 (b, C, H, W)."""
        rows = self.local_rows()
        index = torch.from_numpy(r.index[rows])
        x0 = self.images[index.to(self.images.device)].to(self.device)
        flip = r.flip[rows].to(self.device)
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        i = None if r.i is None else r.i[rows].to(self.device)
        return to_model_scale(x0), i, r.noise[rows].to(self.device, torch.float64)

    def _discrete_inputs(self, x0, i, noise):
        """The network's input (x_t, i) of a discrete objective and its per-image loss of rows `rows`."""
        tc, d = self.cfg.training, self.cfg.diffusion
        xt = q_sample(self.schedule, x0, i, noise)

        def per_image(output: torch.Tensor, rows: slice) -> torch.Tensor:
            return training_loss(tc.objective, d, self.schedule, output, x0[rows], xt[rows], i[rows], noise[rows],
                                 tc.decoder_cdf)

        return xt, i, per_image

    def _continuous_inputs(self, x0, u, noise):
        """The network's input (z_t, network_input(gamma(t))) of the continuous objective and its per-image
        loss (losses.vdm_diffusion_loss) of rows `rows`."""
        sched = training_time_schedule(self.cfg.noise)
        t = sched.t_min + (sched.t_max - sched.t_min) * u.to(self.device, torch.float64)
        gamma = sched.gamma(t)
        dgamma_dt = sched.dgamma_dt(t)
        zt = diffuse(x0, gamma, noise)

        def per_image(output: torch.Tensor, rows: slice) -> torch.Tensor:
            return vdm_diffusion_loss(noise[rows], output, dgamma_dt[rows], sched.t_max - sched.t_min)

        return zt, self.cfg.noise.network_input(gamma), per_image

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Forward and backward of step `self.step` + 1. Returns (this rank's mean loss, global gradient
        norm before clipping, learning rate); the update itself is `apply_update`, so a caller can stop
        on a non-finite loss with the parameters untouched."""
        tc, d = self.cfg.training, self.cfg.diffusion
        n, c, h, w = self.images.shape
        p = self.resampler.probabilities() if self.resampler is not None else None
        r = step_randomness(tc.seed, self.step, tc.batch_size, n, d.T, (c, h, w), tc.random_flip, p,
                            tc.time_sampling if self.cfg.continuous else None)
        x0, i, noise = self.local_batch(r)
        # L_vlb: each term weighted by 1 / (T p_t); the uniform objectives: 1
        weight = None if p is None else (1.0 / (d.T * p.to(self.device)[i]))
        if self.cfg.continuous:
            xt, net_t, per_image = self._continuous_inputs(x0, r.u[self.local_rows()], noise)
        else:
            xt, net_t, per_image = self._discrete_inputs(x0, i, noise)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(stream_seed(tc.seed, STREAM_DROPOUT, self.step, self.rank))
        torch.manual_seed(stream_seed(tc.seed, STREAM_DROPOUT, self.step, self.rank))
        self.ddp_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if tc.grad_clip_group:
            loss, grad_norm, terms = self._clipped_by_group(xt, net_t, per_image, weight, tc.grad_clip_group)
        else:
            output = self.ddp_model(xt.to(torch.float32), net_t)
            terms = per_image(output, slice(None))
            loss = (terms if weight is None else terms * weight).mean()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip or float("inf"))
        if self.resampler is not None:
            self._pending_terms = (r.i, self._gather(terms.detach()))
        return loss.detach(), grad_norm.detach(), learning_rate(self.step, tc.lr, tc.warmup)

    def _gather(self, local: torch.Tensor) -> torch.Tensor:
        """(b,) values of this rank's rows -> (B,) of the global batch, in its row order, on the CPU."""
        if self.world == 1:
            return local.cpu()
        parts = [torch.empty_like(local) for _ in range(self.world)]
        torch.distributed.all_gather(parts, local.contiguous())
        return torch.cat(parts).cpu()

    def _clipped_by_group(self, xt, net_t, per_image, weight, group: int) -> tuple[torch.Tensor, ...]:
        """The official trainer's clipping (tpu_utils with a cross-shard optimizer): the gradient of each
        group of `group` images (one TPU core's share) is clipped to norm `grad_clip` on its own, as
        tf.clip_by_global_norm does it, and the clipped gradients are averaged over every group of the
        global batch. Returns this rank's mean loss, the mean of the groups' norms before clipping, and the
        per-image (unweighted) losses."""
        tc = self.cfg.training
        params = [p for p in self.model.parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in params]
        losses, norms, terms = [], [], []
        groups = range(0, xt.shape[0], group)
        for g in groups:
            rows = slice(g, g + group)
            output = self.model(xt[rows].to(torch.float32), net_t[rows])  # each group on its own, no all-reduce
            values = per_image(output, rows)
            loss = (values if weight is None else values * weight[rows]).mean()
            terms.append(values.detach())
            grads = torch.autograd.grad(loss, params)
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(gr) for gr in grads]))
            scale = tc.grad_clip / torch.maximum(norm, torch.tensor(tc.grad_clip, device=norm.device))
            for t, gr in zip(total, grads, strict=True):
                t.add_(gr * scale)
            losses.append(loss.detach())
            norms.append(norm.detach())
        count = len(groups) * self.world
        for p, t in zip(params, total, strict=True):
            if self.world > 1:
                torch.distributed.all_reduce(t)
            p.grad = t / count
        return torch.stack(losses).mean(), torch.stack(norms).mean(), torch.cat(terms)

    def apply_update(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.ema.update(self.model)
        if self.resampler is not None and self._pending_terms is not None:
            self.resampler.update(*self._pending_terms)
            self._pending_terms = None
        self.step += 1

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue exactly (randomness is a function of (seed, step), and of the
        resampler's history for L_vlb)."""
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "step": self.step}
        if self.resampler is not None:
            state["resampler"] = self.resampler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.resampler is not None and "resampler" not in state:
            raise ValueError("the checkpoint has no resampler history, which the L_vlb objective needs to resume")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.resampler is not None:
            self.resampler.load_state_dict(state["resampler"])
        self.step = int(state["step"])
