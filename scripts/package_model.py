"""Package a training checkpoint as a model that ships with the install (`--ckpt embedded`, `--name` for
another of ddpm_bench/models/formats/packaged.py's names): keep what evaluation needs (format, config, raw
and EMA weights, or with `--weights ema` the EMA weights only, step, data, provenance), drop the optimizer
and the resume state, write the packaged file (ddpm_bench/models/embedded/) and put its sha256 into
ddpm_bench/models/formats/packaged.py (checked on every load).

    python scripts/package_model.py runs/embedded-train/checkpoints/ckpt_0010000.pt
    python scripts/package_model.py runs/embedded-continuous-train/checkpoints/ckpt_0012000.pt \
        --name embedded-continuous --weights ema
"""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import torch

from ddpm_bench.checkpoint import load_checkpoint
from ddpm_bench.models.formats import packaged as packaged_module
from ddpm_bench.models.formats.packaged import PACKAGED
from ddpm_bench.provenance import sha256_file
from ddpm_bench.shards import atomic_write_bytes

KEEP = ("format", "config", "model", "ema", "step", "data", "provenance")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt", help="a checkpoint written by `ddpm-bench train`")
    p.add_argument("--name", default="embedded", choices=sorted(PACKAGED))
    p.add_argument("--weights", default="both", choices=("both", "ema"),
                   help="ema: the EMA weights only, half the file (`--weights raw` is then refused on load)")
    a = p.parse_args(argv)
    ckpt = load_checkpoint(a.ckpt)
    packaged = {k: ckpt[k] for k in KEEP if k in ckpt}
    if a.weights == "ema":
        packaged["model"] = {}  # the checkpoint format's key, empty: no raw weights
    packaged["config"] = {k: v for k, v in ckpt["config"].items() if k != "evaluation"}
    out: Path = PACKAGED[a.name][0]
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(packaged, buf)
    atomic_write_bytes(out, buf.getvalue())
    sha = sha256_file(out)
    source = Path(packaged_module.__file__)
    text, n = re.subn(rf'("{a.name}": \(EMBEDDED_DIR / "{out.name}",\s*")[0-9a-f]{{64}}(")', rf"\g<1>{sha}\g<2>",
                      source.read_text())
    if n != 1:
        raise SystemExit(f"{source}: the sha256 of {a.name!r} was not found; put {sha} there by hand")
    source.write_text(text)
    print(f"{out}: step {packaged['step']}, {out.stat().st_size / 2**20:.2f} MiB, sha256 {sha} (written into {source})")


if __name__ == "__main__":
    main()
