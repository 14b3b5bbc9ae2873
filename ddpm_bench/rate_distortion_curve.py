"""Rate and distortion along the reverse process, from the per-image, per-term bound (float64).

DDPM (Ho et al. 2020) §4.3 "Progressive coding", Table 4 and Figure 5.
For t = T..1, at "reverse process time" s = T - t + 1:

- rate(t) = L_T + sum_{k=t}^{T-1} L_k bits/dim: what a receiver holding x_t has been sent. At t = 1 it is
  L_1 + ... + L_T, the paper's "rate" (1.78 bits/dim for the CIFAR-10 L_simple model).
- distortion(t) = RMSE on the 0..255 scale of the x0 prediction x0_hat(x_t) against x_0 (Eq. 15 for the
  `eps` parameterisation), from the same draws of x_t as the bound (x_t is the draw used by term t - 1).
- the paper's "distortion" in bits/dim is the decoder term L_0.

Inputs are the arrays of an nll output's `per_image.npz`:
  terms  (N, T+1) float64 bits/dim, column k = L_k;
  mse    (N, T)   float64, column k = mean over dims of (x0_hat(x_{k+1}) - x_0)^2 in model scale [-1, 1].
No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PIXEL_SCALE = 127.5  # model scale [-1, 1] -> 0..255: a model-scale error e is 127.5 e pixel levels
TABLE4_FRACTIONS = tuple(k / 10 for k in range(10, 0, -1))  # reverse times T, 0.9T, ..., 0.1T (Table 4)


@dataclass(frozen=True)
class RateDistortionCurve:
    """One row per t, ordered t = T..1 (reverse time s = 1..T), all float64 except t and s."""

    t: np.ndarray  # (T,) int64, T..1
    reverse_time: np.ndarray  # (T,) int64, s = T - t + 1, 1..T
    rate_bpd: np.ndarray  # (T,) bits/dim, L_T + sum_{k=t}^{T-1} L_k, mean over images
    rmse: np.ndarray  # (T,) 0..255 scale, 127.5 sqrt(mean over images and dims of the squared error)
    rmse_per_image: np.ndarray  # (T,) 0..255 scale, mean over images of the per-image RMSE

    @property
    def T(self) -> int:
        return int(self.t.shape[0])

    def __repr__(self) -> str:
        return (f"<RateDistortionCurve T={self.T}: rate at t = T {self.rate_bpd[0]:.4f} bits/dim (RMSE "
                f"{self.rmse[0]:.2f}), at t = 1 {self.rate_bpd[-1]:.4f} bits/dim (RMSE {self.rmse[-1]:.2f}, 0..255)>")


def check_terms(terms: np.ndarray) -> np.ndarray:
    """`terms` as float64 (N, T+1) with N >= 1, T >= 1 and finite values; ValueError naming the problem."""
    terms = np.asarray(terms, dtype=np.float64)
    if terms.ndim != 2 or terms.shape[0] < 1 or terms.shape[1] < 2:
        raise ValueError(f"terms must be (N, T+1) with N >= 1 and T >= 1, got shape {terms.shape}")
    if not np.all(np.isfinite(terms)):
        raise ValueError("terms holds non-finite values")
    return terms


def check_mse(mse: np.ndarray, terms_shape: tuple[int, int]) -> np.ndarray:
    """`mse` as float64 (N, T) matching terms (N, T+1), finite and non-negative."""
    mse = np.asarray(mse, dtype=np.float64)
    n, t_plus_1 = terms_shape
    if mse.shape != (n, t_plus_1 - 1):
        raise ValueError(f"mse must be (N, T) = ({n}, {t_plus_1 - 1}) to match terms {terms_shape}, got shape {mse.shape}")
    if not np.all(np.isfinite(mse)) or np.any(mse < 0):
        raise ValueError("mse holds negative or non-finite values")
    return mse


def reverse_time(t: np.ndarray | int, T: int) -> np.ndarray | int:
    """Reverse process time s = T - t + 1 (Table 4): s = 1 at t = T, s = T at t = 1."""
    return T - t + 1


def rate_bpd(terms: np.ndarray) -> np.ndarray:
    """rate(t) = mean over images of L_T + sum_{k=t}^{T-1} L_k, for t = 1..T (index t - 1), bits/dim.

    §4.3 / Table 4: the bits sent before x_t is known to the receiver. rate(T) = L_T, rate(1) = L_1+..+L_T.
    """
    terms = check_terms(terms)
    means = terms.mean(axis=0)  # (T+1,) mean over images, L_0..L_T
    # Reverse cumulative sum over k = T, T-1, ..., 1: entry t - 1 holds sum_{k=t}^{T} L_k.
    return np.cumsum(means[:0:-1])[::-1].copy()


def rmse(mse: np.ndarray) -> np.ndarray:
    """distortion(t) = 127.5 sqrt(mean over images and dims of the squared x0 error), t = 1..T (index t - 1).

    Table 4 / Figure 5 "Distortion (RMSE [0, 255])": the error of x0_hat(x_t) (Eq. 15) on the pixel scale.
    """
    mse = np.asarray(mse, dtype=np.float64)
    return PIXEL_SCALE * np.sqrt(mse.mean(axis=0))


def rmse_per_image(mse: np.ndarray) -> np.ndarray:
    """Mean over images of each image's RMSE 127.5 sqrt(mse[j, t-1]), t = 1..T (index t - 1)."""
    mse = np.asarray(mse, dtype=np.float64)
    return (PIXEL_SCALE * np.sqrt(mse)).mean(axis=0)


def distortion_bpd(terms: np.ndarray) -> float:
    """The paper's distortion in bits/dim (§4.3): the decoder term L_0, mean over images."""
    return float(check_terms(terms)[:, 0].mean())


def rate_distortion_curve(terms: np.ndarray, mse: np.ndarray | None) -> RateDistortionCurve:
    """Rate and distortion for every t = T..1 (Figure 5). `mse` None gives NaN distortion columns."""
    terms = check_terms(terms)
    T = terms.shape[1] - 1
    t = np.arange(T, 0, -1, dtype=np.int64)
    rate = rate_bpd(terms)[t - 1]
    if mse is None:
        nan = np.full(T, np.nan)
        err, err_img = nan, nan.copy()
    else:
        mse = check_mse(mse, terms.shape)
        err, err_img = rmse(mse)[t - 1], rmse_per_image(mse)[t - 1]
    return RateDistortionCurve(t=t, reverse_time=reverse_time(t, T), rate_bpd=rate, rmse=err, rmse_per_image=err_img)


def table4_reverse_times(T: int) -> np.ndarray:
    """Reverse times of Table 4: T, 0.9T, ..., 0.1T, rounded half up, at least 1, duplicates dropped.

    For T = 1000 these are 1000, 900, ..., 100 as in the paper.
    """
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    s = [max(1, int(np.floor(f * T + 0.5))) for f in TABLE4_FRACTIONS]
    return np.array(list(dict.fromkeys(s)), dtype=np.int64)


def table4_rows(curve: RateDistortionCurve) -> RateDistortionCurve:
    """The curve at the reverse times of Table 4 (T, 0.9T, ..., 0.1T), in that order."""
    s = table4_reverse_times(curve.T)
    rows = np.searchsorted(curve.reverse_time, s)  # the curve is ordered by reverse time
    if not np.array_equal(curve.reverse_time[rows], s):
        raise ValueError("the curve does not hold every reverse time 1..T")
    return RateDistortionCurve(t=curve.t[rows], reverse_time=curve.reverse_time[rows], rate_bpd=curve.rate_bpd[rows],
                               rmse=curve.rmse[rows], rmse_per_image=curve.rmse_per_image[rows])
