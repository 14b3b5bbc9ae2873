"""Models that ship with the install: `--ckpt embedded` names a small U-Net trained by the reference trainer
on `embedded:train` (recipes/embedded.toml), `--ckpt embedded-continuous` the same U-Net trained as a
continuous-time model with VDM's objective (recipes/embedded_continuous.toml; its EMA weights only). How, how
long and their logs: ddpm_bench/models/embedded/README.md. Each file is a ddpm-bench checkpoint, checked
against its sha256 on every load."""

from __future__ import annotations

from pathlib import Path

from ddpm_bench.arguments import given
from ddpm_bench.errors import CheckpointError
from ddpm_bench.models.formats import checkpoint
from ddpm_bench.models.loaded import LoadedModel
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.provenance import sha256_file

NAME = "packaged"
EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "embedded"
PACKAGED = {
    # name: (file, sha256)
    "embedded": (EMBEDDED_DIR / "embedded.pt", "4051fe61da896441c99fa75c1f6a94449bd91ff73028c7aeb3804190d3364640"),
    "embedded-continuous": (EMBEDDED_DIR / "embedded_continuous.pt",
                            "aa6764588cfbdf975052012c90b3e7b2dcbd6932d53928e0318af00e06558787"),
}


def detect(spec: ModelSpec) -> bool:
    """One of the packaged names (a checkpoint file called `embedded` is `./embedded`)."""
    return spec.ckpt in PACKAGED


def packaged_file(name: str) -> Path:
    """The checked file of the packaged model `name`."""
    path, sha256 = PACKAGED[name]
    if not path.is_file():
        raise CheckpointError(f"{given('source', name)}: the packaged model is missing from this installation ({path}); "
                              "reinstall ddpm-bench")
    got = sha256_file(path)
    if got != sha256:
        raise CheckpointError(f"{given('source', name)}: {path} is damaged (sha256 {got[:12]}..., expected "
                              f"{sha256[:12]}...); reinstall ddpm-bench")
    return path


def load(spec: ModelSpec) -> LoadedModel:
    return checkpoint.load_file(packaged_file(spec.ckpt), spec, packaged=spec.ckpt)


def inspect(spec: ModelSpec) -> dict:
    return {**checkpoint.inspect(ModelSpec(ckpt=str(packaged_file(spec.ckpt)))), "packaged": spec.ckpt}
