"""Importance sampling of the timestep for the `L_vlb` objective (improved DDPM, Nichol and Dhariwal 2021,
section 3.3, Eq. 18): L_vlb = E_{t ~ p_t}[L_t / p_t] with p_t proportional to sqrt(E[L_t^2]), the second
moment estimated from the last HISTORY values of each term.

As improved-diffusion's `LossSecondMomentResampler`:
- uniform until every term has HISTORY values;
- then p = (1 - UNIFORM_MIX) w / sum(w) + UNIFORM_MIX / T with w_t = sqrt(mean of the stored L_t^2), so
  that no term's probability is 0 and the estimate stays unbiased;
- after every step the global batch's unweighted terms enter the history in batch order, a full row
  dropping its oldest value.

The history is float64 and part of the training checkpoint: a resumed run draws the same timesteps.
"""

from __future__ import annotations

import torch

HISTORY = 10  # values kept per term
UNIFORM_MIX = 0.001  # the share of uniform sampling mixed in (improved-diffusion's uniform_prob)


class LossSecondMomentResampler:
    """p_t from the history of the terms L_t (t = 1..T, stored at network index i = t - 1)."""

    def __init__(self, T: int):
        self.T = T
        self.history = torch.zeros(T, HISTORY, dtype=torch.float64)
        self.count = torch.zeros(T, dtype=torch.int64)  # values stored per term, at most HISTORY

    @property
    def warmed_up(self) -> bool:
        return bool((self.count == HISTORY).all())

    def probabilities(self) -> torch.Tensor:
        """(T,) float64 p_i, summing to 1 (to rounding)."""
        if not self.warmed_up:
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        w = self.history.square().mean(dim=1).sqrt()
        return (1.0 - UNIFORM_MIX) * w / w.sum() + UNIFORM_MIX / self.T

    def update(self, i: torch.Tensor, terms: torch.Tensor) -> None:
        """Add the unweighted terms `terms` (B,) of the global batch's network indices `i` (B,), in order."""
        for index, value in zip(i.tolist(), terms.to(torch.float64).tolist(), strict=True):
            n = int(self.count[index])
            if n == HISTORY:
                self.history[index, :-1] = self.history[index, 1:].clone()
                self.history[index, -1] = value
            else:
                self.history[index, n] = value
                self.count[index] = n + 1

    def state_dict(self) -> dict:
        return {"history": self.history.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict) -> None:
        history, count = state["history"], state["count"]
        if tuple(history.shape) != (self.T, HISTORY) or tuple(count.shape) != (self.T,):
            raise ValueError(f"the resampler history has shape {tuple(history.shape)}, expected {(self.T, HISTORY)}")
        self.history = history.to(torch.float64).cpu().clone()
        self.count = count.to(torch.int64).cpu().clone()


def draw_indices(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B,) network indices with P(i) = p_i from uniforms `u` in [0, 1) (inverse CDF, float64)."""
    cdf = torch.cumsum(p.to(torch.float64), dim=0)
    return torch.searchsorted(cdf, u.to(torch.float64) * cdf[-1], right=True).clamp_(max=p.numel() - 1)
