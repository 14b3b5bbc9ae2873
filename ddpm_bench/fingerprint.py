"""What a model computes, in a few numbers: the fingerprint the run lifecycle keeps beside a run's identity
(run.json; not part of it, since float rounding may move it) and compares when the run is resumed, so that
a model whose files say the same but whose code or inputs changed is refused (ddpm_bench.run_dir.claim).

The probe: FINGERPRINT_INPUTS seeded inputs at three noise levels, the network called uncompiled and
contiguous, each output channel averaged over at most 4 x 4 blocks. A discrete model is probed at its
first, middle and last network index (as since 0.3: runs of earlier versions resume); a continuous one at
its lowest, middle and highest gamma.
"""

from __future__ import annotations

import torch

from ddpm_bench.network import Network, network_precision
from ddpm_bench.noise import counter_normal
from ddpm_bench.run_dir import Fingerprint

FINGERPRINT_SEED = 20200619  # the probe inputs
FINGERPRINT_INPUTS = 2  # inputs per noise level of the probe
# largest difference of two fingerprints, relative to the outputs' scale, that is float rounding (bf16 rounds
# each value to 8 bits of mantissa; another model differs by far more)
FINGERPRINT_TOLERANCE = {"fp32": 1e-3, "tf32": 1e-2, "bf16": 3e-2}


def fingerprint(network: Network, image_shape: tuple[int, int, int]) -> list[float]:
    """The network's outputs on the fixed probe (see the module docstring), as plain numbers; [] when the
    model's output is not a tensor of the probe's batch (its first real call names what is wrong)."""
    model = network.model
    convention = network.convention
    if convention.continuous:
        lo, hi = convention.gamma_range()
        levels = [lo, 0.5 * (lo + hi), hi]
    else:
        T = network.diffusion.T
        levels = sorted({0, T // 2, T - 1})
    n = FINGERPRINT_INPUTS * len(levels)
    keys = torch.stack([torch.arange(n), torch.full((n,), -7), torch.zeros(n, dtype=torch.long)], 1)
    x = (0.5 * counter_normal(FINGERPRINT_SEED, keys, tuple(image_shape))).to(network.device)
    if convention.continuous:
        gamma = torch.tensor([g for g in levels for _ in range(FINGERPRINT_INPUTS)], dtype=torch.float64,
                             device=network.device)
        noise = convention.network_input(gamma)
    else:
        noise = model.timestep_input(torch.tensor([s for s in levels for _ in range(FINGERPRINT_INPUTS)],
                                                  dtype=torch.long, device=network.device))
    with network.in_use(), torch.no_grad(), network_precision(network.precision, network.device):
        out = network.call_backbone(x.to(torch.float32), noise, model.backbone)  # no inference tensors: autograd later
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != n or out.device != x.device:
        return []
    pooled = torch.nn.functional.adaptive_avg_pool2d(out.float(), (min(4, out.shape[2]), min(4, out.shape[3])))
    return [float(f"{v:.9g}") for v in pooled.double().flatten().cpu().tolist()]


def same_function(precision: str):
    """(stored, now) -> None when two fingerprints agree within what float rounding (threads, devices, batch
    layout) can move at `precision`; else the largest difference relative to the outputs' scale."""

    def differs(stored: list[float], now: list[float]) -> float | None:
        a, b = torch.tensor(stored, dtype=torch.float64), torch.tensor(now, dtype=torch.float64)
        if a.shape != b.shape:
            return float("inf")
        scale = max(1.0, float(a.abs().max()) if a.numel() else 1.0)
        diff = float((a - b).abs().max()) / scale if a.numel() else 0.0
        return None if diff <= FINGERPRINT_TOLERANCE[precision] else diff

    return differs


def run_fingerprint(network: Network, image_shape: tuple[int, int, int]) -> Fingerprint:
    """The fingerprint a run keeps (ddpm_bench.run_dir.claim)."""
    return Fingerprint(fingerprint(network, image_shape), same_function(network.precision))
