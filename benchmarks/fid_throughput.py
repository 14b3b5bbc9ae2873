"""Feature-extraction throughput of the packaged FID Inception through both backends (CPU or GPU).

    python benchmarks/fid_throughput.py --num 256 --batch-size 64 [--device cpu] [--out PATH.json]

Images are uniform noise at 32x32 (throughput does not depend on content: every image is resized to
299x299 before the network). Prints images/s per backend/mode and the extrapolated time of the paper's
protocol (50,000 samples + 50,000 CIFAR-10 training images for the reference statistics).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from ddpm_bench.metrics import clean_fid_backend, torch_fidelity_backend
from ddpm_bench.metrics.extractors import PACKAGED, resolve_extractor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    images = np.random.default_rng(0).integers(0, 256, (args.num, 32, 32, 3), dtype=np.uint8)
    ex = resolve_extractor(PACKAGED)
    rows = {}
    # warm-up (TorchScript profiling runs) on one small batch, not timed
    torch_fidelity_backend.extract_features(images[:8], ex, dev, 8, "warm-up")
    t0 = time.perf_counter()
    tf = torch_fidelity_backend.extract_features(images, ex, dev, args.batch_size, "bench")["2048"]
    rows["torch-fidelity"] = args.num / (time.perf_counter() - t0)
    for mode in clean_fid_backend.MODES:
        model, _ = clean_fid_backend.feature_model(ex, mode, dev, None)
        t0 = time.perf_counter()
        cf = clean_fid_backend.extract_features(images, model, mode, dev, args.batch_size, "bench")
        rows[f"clean-fid {mode}"] = args.num / (time.perf_counter() - t0)
        if mode == "legacy_tensorflow":
            max_abs = float(np.abs(cf - tf).max())
    result = {"images": args.num, "batch_size": args.batch_size, "device": str(dev),
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.processor(),
              "torch": torch.__version__, "images_per_second": rows,
              "max_abs_feature_difference_torch_fidelity_vs_clean_fid_legacy_tf": max_abs,
              "paper_protocol_hours": {k: 100_000 / v / 3600 for k, v in rows.items()}}
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
