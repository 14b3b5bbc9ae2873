"""A ddpm-bench checkpoint (`--ckpt FILE.pt`, ddpm_bench/checkpoint.py), or a `train` / `reproduce` run
directory, whose latest checkpoint is meant. The stored config gives the architecture and the diffusion
settings, and for a continuous-time model its noise convention (`noise`, SPEC section 8); `--weights
ema|raw` chooses the weights; the identity is their sha256 with all of these (a discrete model's without a
convention, as before continuous-time models)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from ddpm_bench.arguments import given
from ddpm_bench.checkpoint import load_checkpoint
from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.errors import CheckpointError
from ddpm_bench.identity import model_identity, state_dict_sha256
from ddpm_bench.messages import note
from ddpm_bench.models.formats.common import check_flags_match, with_convention
from ddpm_bench.models.loaded import LoadedModel
from ddpm_bench.models.registry import build_model
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.noise_level import NoiseConvention
from ddpm_bench.provenance import sha256_file

NAME = "ckpt"
CHECKPOINTS = "checkpoints"  # the folder of a run directory that holds ckpt_XXXXXXX.pt


def detect(spec: ModelSpec) -> bool:
    """A file (or a path that is not there: loading names it), or a run directory with checkpoints."""
    if spec.ckpt is None:
        return False
    path = Path(spec.ckpt)
    return not path.is_dir() or (path / CHECKPOINTS).is_dir()


def checkpoint_file(ckpt: str | Path) -> Path:
    """The file `--ckpt` names: the path itself, or the latest checkpoint of a run directory."""
    path = Path(ckpt)
    if path.is_dir():
        latest = sorted((path / CHECKPOINTS).glob("ckpt_*.pt"))
        if not latest:
            raise CheckpointError(f"{given('source', path)}: a training run without checkpoints yet")
        note(f"{given('source', path)}: a training run; using its latest checkpoint {latest[-1]}")
        return latest[-1]
    return path


def stored_diffusion(config: dict) -> DiffusionConfig:
    known = {f.name for f in fields(DiffusionConfig)}
    return DiffusionConfig(**{k: v for k, v in config["diffusion"].items() if k in known})


def stored_convention(config: dict) -> NoiseConvention:
    """The noise convention of a stored config: its `noise` section (a continuous-time model), or a discrete
    DDPM's when it has none. Raises ValueError or TypeError for an invalid one."""
    noise = config.get("noise")
    if noise is None:
        return NoiseConvention()
    if not isinstance(noise, dict):
        raise ValueError(f"'noise' is {type(noise).__name__}, not a table")
    return NoiseConvention(**noise)


def weights_state(ckpt: dict, weights: str, path: Path) -> dict:
    """The state dict of `weights` ("ema" or "raw"); a packaged file may hold only its EMA weights (an empty
    `model`)."""
    state = ckpt["ema"] if weights == "ema" else ckpt["model"]
    if weights == "raw" and isinstance(state, dict) and not state and ckpt["ema"]:
        raise CheckpointError(f"{given('source', path)}: holds only its EMA weights (packaged without the raw "
                              "ones); use --weights ema")
    return state


def load(spec: ModelSpec) -> LoadedModel:
    return load_file(checkpoint_file(spec.ckpt), spec)


def load_file(path: Path, spec: ModelSpec, packaged: str | None = None) -> LoadedModel:
    """The network of a checkpoint file with the chosen weights, on the CPU."""
    ckpt = load_checkpoint(path)
    config = ckpt["config"]
    try:
        diffusion = stored_diffusion(config)
        convention = stored_convention(config)
        module = build_model(config["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{given('source', path)}: invalid stored config: {e}") from None
    check_flags_match(diffusion, spec.diffusion_flags, f"{given('source', packaged or path)}")
    state = weights_state(ckpt, spec.weights, path)
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{given('source', path)}: {spec.weights} weights do not fit the stored architecture: "
                              f"{str(e).splitlines()[0]}") from None
    module.eval()
    mcfg = config["model"]
    shape = (int(mcfg["in_channels"]), int(mcfg["image_size"]), int(mcfg["image_size"])) \
        if "in_channels" in mcfg and "image_size" in mcfg else None
    step = ckpt["step"]
    if isinstance(step, bool) or not isinstance(step, int):
        raise CheckpointError(f"{given('source', path)}: field 'step' is {type(step).__name__} {step!r}, not an integer")
    prov = {"kind": NAME, "path": str(path.resolve()), "sha256": sha256_file(path), "weights": spec.weights,
            "step": step, **({"packaged": packaged} if packaged else {})}
    ident = model_identity(NAME, spec.weights, state_dict_sha256(state), diffusion, with_convention(mcfg, convention),
                           str(path))
    return LoadedModel(backbone=module, diffusion=diffusion, identity=ident, provenance=prov, image_shape=shape,
                       module=module, config=config, convention=convention)


def inspect(spec: ModelSpec) -> dict:
    """What `inspect --ckpt` shows of a checkpoint: its file, step, both weights' model identities."""
    path = checkpoint_file(spec.ckpt)
    ckpt = load_checkpoint(path)
    try:
        diffusion = stored_diffusion(ckpt["config"])
        architecture = with_convention(ckpt["config"]["model"], stored_convention(ckpt["config"]))
        identities = {w: model_identity(NAME, w, state_dict_sha256(ckpt[key]), diffusion, architecture,
                                        str(path)).sha256 for w, key in (("ema", "ema"), ("raw", "model"))
                      if ckpt[key] or w == "ema"}
        with torch.device("meta"):
            params = sum(p.numel() for p in build_model(ckpt["config"]["model"]).parameters())
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{given('source', path)}: invalid stored model config: {e}") from None
    stored = sum(v.numel() for v in ckpt["model"].values()) if isinstance(ckpt["model"], dict) else None
    return {"ckpt": str(path.resolve()), "kind": NAME, "format": ckpt["format"], "step": ckpt["step"],
            "sha256": sha256_file(path), "params": params, "stored_tensor_elements": stored,
            "model_identity": identities, "config": ckpt["config"], "data": ckpt.get("data")}
