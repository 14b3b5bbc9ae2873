"""Package a training checkpoint as the model that ships with the install (`--ckpt embedded`): keep what
evaluation needs (format, config, raw and EMA weights, step, data, provenance), drop the optimizer and
the resume state, write ddpm_bench/models/embedded/embedded.pt and print its sha256 (for
ddpm_bench/models/packaged.py).

    python scripts/package_model.py runs/embedded-train/checkpoints/ckpt_0010000.pt
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch

from ddpm_bench.checkpoint import load_checkpoint
from ddpm_bench.models.packaged import PACKAGED
from ddpm_bench.provenance import sha256_file
from ddpm_bench.shards import atomic_write_bytes

KEEP = ("format", "config", "model", "ema", "step", "data", "provenance")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", help="a checkpoint written by `ddpm-bench train`")
    p.add_argument("--name", default="embedded", choices=sorted(PACKAGED))
    a = p.parse_args(argv)
    ckpt = load_checkpoint(a.ckpt)
    packaged = {k: ckpt[k] for k in KEEP if k in ckpt}
    packaged["config"] = {k: v for k, v in ckpt["config"].items() if k != "evaluation"}
    out: Path = PACKAGED[a.name][0]
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(packaged, buf)
    atomic_write_bytes(out, buf.getvalue())
    print(f"{out}: step {packaged['step']}, {out.stat().st_size / 2**20:.2f} MiB, sha256 {sha256_file(out)}")


if __name__ == "__main__":
    main()
