"""Models that ship with the install: `--ckpt embedded` (SPEC section 2) names a small U-Net trained by
the reference trainer on `embedded:train` (recipes/embedded.toml; how, how long and its log:
ddpm_bench/models/embedded/README.md). Its file is checked against its sha256 on every load."""

from __future__ import annotations

from pathlib import Path

from ddpm_bench.errors import CheckpointError

EMBEDDED_DIR = Path(__file__).parent / "embedded"
PACKAGED = {
    # name: (file, sha256)
    "embedded": (EMBEDDED_DIR / "embedded.pt", "4051fe61da896441c99fa75c1f6a94449bd91ff73028c7aeb3804190d3364640"),
}


def packaged_checkpoint(name: str) -> Path | None:
    """The checked file of the packaged model `name`, or None when `name` is not one (a path, then; a
    checkpoint file that is called `embedded` is `./embedded`)."""
    if name not in PACKAGED:
        return None
    from ddpm_bench.provenance import sha256_file

    path, sha256 = PACKAGED[name]
    if not path.is_file():
        raise CheckpointError(f"--ckpt {name}: the packaged model is missing from this installation ({path}); "
                              "reinstall ddpm-bench")
    got = sha256_file(path)
    if got != sha256:
        raise CheckpointError(f"--ckpt {name}: {path} is damaged (sha256 {got[:12]}..., expected "
                              f"{sha256[:12]}...); reinstall ddpm-bench")
    return path
