"""FID, IS, KID and precision/recall through torch-fidelity's own pipeline.

Images go in as a torch Dataset of uint8 (3, H, W) tensors; torch-fidelity's `get_featuresdict_from_dataset`
runs the registered extractor (which resizes to 299 with its TF1-compatible bilinear interpolation), and
its metric functions turn features into numbers: `isc_features_to_metric` (IS over 10 splits),
`fid_features_to_statistics` + `fid_statistics_to_metric` (FID), `kid_features_to_metric` and
`prc_features_to_metric`. Only the reference features/statistics are kept by ddpm-bench's cache.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.utils import get_featuresdict_from_dataset

from ddpm_bench.metrics.extractors import Extractor
from ddpm_bench.metrics.feature_statistics import check_features

NAME = "torch-fidelity"
MODE = "tf1-bilinear"  # how images reach 299x299: inside the extractor, as TF1 resize_bilinear did
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PRC_NEIGHBORHOOD = 3
RNG_SEED = 2020  # torch-fidelity's default, for the IS shuffle and the KID subsets


class UInt8Images(Dataset):
    """uint8 (N, H, W, C) images -> uint8 (3, H, W) tensors; grayscale repeated to 3 channels."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def extract_features(images: np.ndarray, extractor: Extractor, device: torch.device, batch_size: int,
                     origin: str, network=None) -> dict[str, np.ndarray]:
    """torch-fidelity features of uint8 (N, H, W, C) images: {layer name: (N, D) float32}. `network` is
    `extractor.create(device)`, made here when not given."""
    fe = extractor.create(device) if network is None else network
    out = get_featuresdict_from_dataset(UInt8Images(images), fe, batch_size=min(batch_size, len(images)),
                                        cuda=device.type == "cuda", save_cpu_ram=True, verbose=False)
    feats = {k: v.numpy() for k, v in out.items()}
    for k, v in feats.items():
        check_features(v, f"{origin} ({extractor.name} {k})")
    return feats


def statistics(features: np.ndarray) -> dict[str, np.ndarray]:
    """torch-fidelity's FID statistics (np.mean, np.cov), on float64 features."""
    return fid_features_to_statistics(torch.from_numpy(np.asarray(features, dtype=np.float64)))


def frechet_distance(stats_1: dict, stats_2: dict) -> float:
    """torch-fidelity's Frechet distance (eigenvalues of S_1 S_2)."""
    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)["frechet_inception_distance"])


def inception_score(logits: np.ndarray, splits: int = 10, shuffle: bool = True) -> tuple[float, float]:
    """torch-fidelity's IS = exp(E_x KL(p(y|x) || p(y))), mean and std over `splits` splits."""
    out = isc_features_to_metric(torch.from_numpy(np.asarray(logits)), splits=splits, shuffle=shuffle,
                                 rng_seed=RNG_SEED)
    return out["inception_score_mean"], out["inception_score_std"]


def metrics(sample_feats: dict[str, np.ndarray], ref_feats: np.ndarray, ref_stats: dict, extractor: Extractor,
            isc_splits: int = 10, prc: bool = True) -> dict:
    """All torch-fidelity metrics of samples against the reference (features of `extractor.fid_layer`)."""
    f1 = sample_feats[extractor.fid_layer]
    out: dict = {"fid": frechet_distance(statistics(f1), ref_stats)}
    if extractor.isc_layer is not None:
        out["isc_mean"], out["isc_std"] = inception_score(sample_feats[extractor.isc_layer], isc_splits)
    else:
        out["isc_mean"] = out["isc_std"] = None
    t1, t2 = torch.from_numpy(f1), torch.from_numpy(np.asarray(ref_feats, dtype=np.float32))
    subset = min(KID_SUBSET_SIZE, len(f1), len(ref_feats))
    kid = kid_features_to_metric(t1, t2, kid_subsets=KID_SUBSETS, kid_subset_size=subset, rng_seed=RNG_SEED,
                                 verbose=False)
    out["kid_mean"], out["kid_std"], out["kid_subset_size"] = kid["kernel_inception_distance_mean"], \
        kid["kernel_inception_distance_std"], subset
    if prc and min(len(f1), len(ref_feats)) <= PRC_NEIGHBORHOOD:  # its k-th neighbour does not exist
        out["precision"] = out["recall"] = out["f_score"] = None
        out["prc_left_out"] = (f"precision/recall need more than {PRC_NEIGHBORHOOD} images on each side (its "
                               f"neighbourhood); got {len(f1)} samples and {len(ref_feats)} reference images")
    elif prc:
        p = prc_features_to_metric(t1, t2, prc_neighborhood=PRC_NEIGHBORHOOD, save_cpu_ram=True, verbose=False)
        out["precision"], out["recall"], out["f_score"] = p["precision"], p["recall"], p["f_score"]
    return out


def describe() -> dict:
    import torch_fidelity

    return {"library": f"torch-fidelity {torch_fidelity.__version__}", "mode": MODE,
            "resize": "inside the extractor: torch-fidelity's TF1-compatible bilinear resize to 299x299",
            "features": "torch_fidelity.utils.get_featuresdict_from_dataset",
            "statistics": "torch_fidelity.metric_fid.fid_features_to_statistics (float64 features)",
            "fid": "torch_fidelity.metric_fid.fid_statistics_to_metric",
            "isc": f"torch_fidelity.metric_isc.isc_features_to_metric (10 splits, shuffled, seed {RNG_SEED})",
            "kid": f"torch_fidelity.metric_kid.kid_features_to_metric ({KID_SUBSETS} subsets, seed {RNG_SEED})",
            "prc": f"torch_fidelity.metric_prc.prc_features_to_metric (neighbourhood {PRC_NEIGHBORHOOD})"}
