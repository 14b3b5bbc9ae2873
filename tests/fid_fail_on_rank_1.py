"""A torchrun script for the scale tests: `ddpm-bench fid` whose feature extraction fails on rank 1 only."""

import os
import sys

from ddpm_bench.cli import main
from ddpm_bench.errors import DataError
from ddpm_bench.metrics import torch_fidelity_backend

if os.environ.get("RANK") == "1":
    def broken(*args, **kwargs):
        raise DataError("rank 1: the feature extractor broke")

    torch_fidelity_backend.extract_features = broken

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
