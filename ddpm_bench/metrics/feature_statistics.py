"""Feature statistics for the Frechet distance (Heusel et al. 2017, the FID of DDPM Table 1).

FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) between Gaussians fitted to Inception
features. The distance itself is always computed by the backend libraries; this module only checks
features and fits the Gaussians in float64 (the libraries' own `np.mean` / `np.cov`, on float64 input).
"""

from __future__ import annotations

import numpy as np

from ddpm_bench.errors import DataError


class FeatureError(DataError):
    """Features that are not finite (NaN or inf): broken images or a broken extractor."""


def check_features(features: np.ndarray, origin: str) -> np.ndarray:
    """(N, D) features must be finite; a FeatureError naming `origin` otherwise."""
    if features.ndim != 2:
        raise FeatureError(f"{origin}: features must be (N, D), got shape {features.shape}")
    bad = ~np.isfinite(features)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise FeatureError(f"{origin}: {len(rows)} of {len(features)} feature vectors hold NaN or inf "
                           f"(first at image {int(rows[0])})")
    return features


def feature_statistics(features: np.ndarray) -> dict[str, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return {"mu": f.mean(axis=0), "sigma": np.cov(f, rowvar=False)}
