"""FID and KID through clean-fid (Parmar, Zhang, Zhu 2022), in its `clean` or `legacy_tensorflow` mode.

clean-fid's modes differ only in how a 32x32 image reaches the network's 299x299 input:
- `clean`: PIL bicubic resize of each channel in float32, without quantisation (`cleanfid.resize.build_resizer`),
  then the network; the resize clean-fid recommends (anti-aliased, no uint8 rounding).
- `legacy_tensorflow`: no resize outside; the network resizes inside as TF1 `resize_bilinear` did (the
  NVIDIA TorchScript Inception with `resize_inside=True`), which reproduces the original TF FID code,
  the code the paper's numbers come from.
(cleanfid is imported only when this backend runs: it imports torchvision, which is slow to load.)
Images go through `build_resizer(mode)` and the tensor conversion of clean-fid's `ResizeDataset`, features
come from `cleanfid.fid.get_batch_features`, and the numbers from `cleanfid.fid.frechet_distance` and
`kernel_distance`. With the standard weights the network is clean-fid's own `InceptionV3W`; with the
packaged or test extractor, clean-fid gets that network as its custom feature extractor (for the
packaged Inception in `legacy_tensorflow` mode the resize inside is torch-fidelity's TF1 emulation).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ddpm_bench.metrics.extractors import (
    STANDARD,
    Extractor,
    WeightsUnavailable,
    downloads_allowed,
    how_to_get_standard_weights,
)
from ddpm_bench.metrics.feature_statistics import check_features, feature_statistics

NAME = "clean-fid"
MODES = ("clean", "legacy_tensorflow")
CLEAN_FID_WEIGHTS_FILE = "inception-2015-12-05.pt"  # NVIDIA's TorchScript FID Inception, clean-fid's default
CLEAN_FID_CACHE = "/tmp"  # where clean-fid downloads it on Linux
KID_SEED = 0


class ResizedImages(Dataset):
    """uint8 (N, H, W, C) images -> float32 (3, h, w) in 0..255 after clean-fid's resizer for `mode`."""

    def __init__(self, images: np.ndarray, mode: str):
        import torchvision.transforms
        from cleanfid.resize import build_resizer

        self.images, self.fn_resize = images, build_resizer(mode)
        self.to_tensor = torchvision.transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.images[i]
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        resized = self.fn_resize(np.ascontiguousarray(img))
        # as cleanfid.utils.ResizeDataset: ToTensor scales uint8 to [0, 1], leaves float32 as it is
        return self.to_tensor(np.array(resized)) * 255 if resized.dtype == np.uint8 else self.to_tensor(resized)


def standard_weights_folder(inception_weights: str | None) -> Path:
    """A folder holding clean-fid's `inception-2015-12-05.pt`: beside --inception-weights, clean-fid's cache
    folder, or a download by clean-fid into that folder."""
    candidates = ([Path(inception_weights).parent] if inception_weights else []) + [Path(CLEAN_FID_CACHE)]
    for folder in candidates:
        if (folder / CLEAN_FID_WEIGHTS_FILE).is_file():
            return folder
    hint = (f"put clean-fid's {CLEAN_FID_WEIGHTS_FILE} in {CLEAN_FID_CACHE} or beside --inception-weights; "
            + how_to_get_standard_weights())
    if not downloads_allowed():
        raise WeightsUnavailable(f"clean-fid's standard Inception is not cached; {hint}")
    try:
        from cleanfid.downloads_helper import check_download_inception

        check_download_inception(fpath=CLEAN_FID_CACHE)
    except Exception as e:
        part = Path(CLEAN_FID_CACHE) / CLEAN_FID_WEIGHTS_FILE
        if part.exists() and part.stat().st_size == 0:
            os.unlink(part)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise WeightsUnavailable(f"clean-fid's standard Inception could not be fetched ({reason}); {hint}") from None
    return Path(CLEAN_FID_CACHE)


def feature_model(extractor: Extractor, mode: str, device: torch.device, inception_weights: str | None):
    """(callable float (N, 3, h, w) in 0..255 -> (N, D), description)."""
    if extractor.name == STANDARD:
        from cleanfid.inception_torchscript import InceptionV3W

        folder = standard_weights_folder(inception_weights)
        model = InceptionV3W(str(folder), download=False, resize_inside=mode == "legacy_tensorflow").to(device).eval()
        return model, {"network": f"cleanfid InceptionV3W ({folder / CLEAN_FID_WEIGHTS_FILE})",
                       "weights_sha256": _sha256(folder / CLEAN_FID_WEIGHTS_FILE)}
    fe = extractor.create(device)
    return fe.float_forward, {"network": f"custom feature extractor: {extractor.name}",
                              "weights_sha256": extractor.weights_sha256}


def _sha256(path: Path) -> str:
    from ddpm_bench.provenance import sha256_file

    return sha256_file(path)


def extract_features(images: np.ndarray, model, mode: str, device: torch.device, batch_size: int,
                     origin: str) -> np.ndarray:
    """clean-fid features (N, D) float32 of uint8 (N, H, W, C) images."""
    from cleanfid.fid import get_batch_features

    if mode not in MODES:
        raise ValueError(f"clean-fid mode must be one of {MODES}, got {mode!r}")
    loader = DataLoader(ResizedImages(images, mode), batch_size=batch_size, shuffle=False, num_workers=0)
    feats = np.concatenate([get_batch_features(batch, model, device) for batch in loader]).astype(np.float32)
    return check_features(feats.reshape(len(images), -1), f"{origin} (clean-fid {mode})")


def statistics(features: np.ndarray) -> dict[str, np.ndarray]:
    """clean-fid's statistics (np.mean, np.cov as in `compute_fid`), on float64 features."""
    return feature_statistics(features)


def frechet_distance(stats_1: dict, stats_2: dict) -> float:
    """clean-fid's Frechet distance (scipy sqrtm of S_1 S_2)."""
    from cleanfid.fid import frechet_distance as _clean_frechet_distance

    return float(_clean_frechet_distance(stats_1["mu"], stats_1["sigma"], stats_2["mu"], stats_2["sigma"]))


def metrics(sample_feats: np.ndarray, ref_feats: np.ndarray, ref_stats: dict, mode: str) -> dict:
    """clean-fid FID and KID of samples against the reference."""
    from cleanfid.fid import kernel_distance

    out = {"fid": frechet_distance(statistics(sample_feats), ref_stats), "mode": mode}
    state = np.random.get_state()  # kernel_distance draws its subsets from numpy's global generator
    try:
        np.random.seed(KID_SEED)
        out["kid"] = kernel_distance(np.asarray(sample_feats, np.float64), np.asarray(ref_feats, np.float64))
    finally:
        np.random.set_state(state)
    return out


def describe(mode: str) -> dict:
    import importlib.metadata

    resize = {"clean": "cleanfid.resize.build_resizer('clean'): PIL bicubic per channel in float32 to 299x299, "
                       "no quantisation",
              "legacy_tensorflow": "none outside; TF1 bilinear resize to 299x299 inside the network"}[mode]
    return {"library": f"clean-fid {importlib.metadata.version('clean-fid')}", "mode": mode, "resize": resize,
            "features": "cleanfid.fid.get_batch_features",
            "statistics": "np.mean / np.cov of float64 features, as cleanfid.fid.compute_fid",
            "fid": "cleanfid.fid.frechet_distance",
            "kid": f"cleanfid.fid.kernel_distance (100 subsets, numpy seed {KID_SEED})"}
