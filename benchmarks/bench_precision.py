"""How far the network precision moves the bound: fp32 against tf32 and bf16 on the same model, images
and noise keys (the KL and decoder math stay float64 in every case), per term and in total, bits/dim.

On a CPU, tf32 is the same as fp32 (TF32 exists only on NVIDIA Ampere and later GPUs); bf16 runs the
network under torch.autocast. On a GPU pass --device cuda.

    PYTHONPATH=. python benchmarks/bench_precision.py --T 100 --images 4
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from small_unet import SmallUNet  # noqa: E402

from ddpm_bench import load_model  # noqa: E402
from ddpm_bench.diffusion import DiffusionConfig  # noqa: E402
from ddpm_bench.variational_bound import compute_bound  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    cfg = DiffusionConfig(T=a.T)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (a.images, 3, a.size, a.size), dtype=np.uint8)).to(dev)
    module = SmallUNet().eval()
    runs = {prec: compute_bound(load_model(module, diffusion=cfg, device=a.device, precision=prec), images,
                                torch.arange(a.images), batch_size=a.batch_size).terms.cpu().numpy()
            for prec in ("fp32", "tf32", "bf16")}
    ref = runs["fp32"]
    T = a.T
    print(f"{a.images} images {a.size}x{a.size}x3, T={T}, SmallUNet, device {dev}; fp32 total "
          f"{ref.sum(1).mean():.6f} bits/dim (L_0 {ref[:, 0].mean():.6f}, L_1..L_T-1 {ref[:, 1:T].sum(1).mean():.6f})")
    print("| precision | total bpd | total - fp32 (mean) | max per-image |total diff| | L_0 diff | "
          "L_1..L_T-1 diff | max |per-term diff| (term) |")
    print("|---|---|---|---|---|---|---|")
    for prec, r in runs.items():
        d = r - ref
        per_term = np.abs(d).mean(0)  # mean over images of |diff| per term
        k = int(per_term.argmax())
        print(f"| {prec} | {r.sum(1).mean():.6f} | {d.sum(1).mean():+.2e} | {np.abs(d.sum(1)).max():.2e} | "
              f"{d[:, 0].mean():+.2e} | {d[:, 1:T].sum(1).mean():+.2e} | {per_term[k]:.2e} ({k}) |")
    terms_of_note = sorted({0, 1, 2, T // 10, T // 2, T - 1})
    print("\nmean over images of the term difference to fp32, bits/dim:")
    print("| term | fp32 | " + " | ".join(f"{p} - fp32" for p in runs if p != "fp32") + " |")
    print("|---|---|" + "---|" * (len(runs) - 1))
    for k in terms_of_note:
        print(f"| {k} | {ref[:, k].mean():.4e} | " + " | ".join(f"{(r[:, k] - ref[:, k]).mean():+.2e}"
                                                                 for p, r in runs.items() if p != "fp32") + " |")
    assert all(math.isfinite(float(r.sum())) for r in runs.values())


if __name__ == "__main__":
    main()
