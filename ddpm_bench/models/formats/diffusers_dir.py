"""A diffusers `UNet2DModel` directory (`--ckpt DIR`; optional extra `diffusers`).

This is the format of the converted official DDPM checkpoints on the Hugging Face hub, e.g.
google/ddpm-cifar10-32 (the paper's CIFAR-10 model): `config.json` and `diffusion_pytorch_model.*`,
with the `DDPMScheduler` settings in `scheduler_config.json` beside them, or a pipeline folder with
`unet/` and `scheduler/` subfolders.

The scheduler's settings map to `DiffusionConfig` (T = num_train_timesteps; beta_schedule linear ->
`linear`, scaled_linear -> `quad`, squaredcos_cap_v2 -> `cosine`; prediction_type epsilon -> `eps`,
sample -> `x0`, v_prediction -> `v`; clip_sample_range other than 1 is refused, clip_sample = false is
warned about (`--no-clip` samples as such a scheduler does); variance_type fixed_small[_log] ->
`fixed-small`, fixed_large[_log] -> `fixed-large`, learned_range -> `learned-range`). Without a scheduler config the paper's settings (or the diffusion
flags) are used.

Variance convention at t = 1: diffusers' `fixed_large` uses beta_1 as the variance of p(x_0 | x_1),
whereas ddpm-bench follows the official TF code, whose entry for i = 0 is the posterior variance at
i = 1 ("better decoder log likelihood"). Sampling adds no noise at t = 1, so samples are unaffected;
the bound's decoder term L_0 uses the official convention, as the paper's numbers did. Likewise
`fixed_small` at i = 0 is the clipped posterior variance (entry of i = 1) instead of diffusers' 1e-20.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.errors import CheckpointError, UserError
from ddpm_bench.identity import model_identity, state_dict_sha256
from ddpm_bench.models.formats.common import check_flags_match, diffusion_from_flags
from ddpm_bench.models.loaded import LoadedModel
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.provenance import sha256_file

NAME = "diffusers"
INSTALL_HINT = "pip install 'ddpm-bench[diffusers]'"
WEIGHT_PATTERNS = ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin")

BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quad", "squaredcos_cap_v2": "cosine"}
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VARIANCE_TYPES = {"fixed_small": "fixed-small", "fixed_small_log": "fixed-small", "fixed_large": "fixed-large",
                  "fixed_large_log": "fixed-large", "learned_range": "learned-range"}


def detect(spec: ModelSpec) -> bool:
    """A directory (a train or reproduce run directory is taken by the checkpoint format first)."""
    return spec.ckpt is not None and Path(spec.ckpt).is_dir()


def load(spec: ModelSpec) -> LoadedModel:
    return load_directory(spec.ckpt, spec.diffusion_flags)


def find_unet_dir(path: Path) -> Path:
    """The folder with the UNet's config.json: `path` itself or `path/unet`."""
    for cand in (path / "unet", path):
        if (cand / "config.json").is_file():
            return cand
    raise CheckpointError(f"--ckpt {path}: no config.json of a diffusers UNet2DModel (in it or in unet/)")


def find_scheduler_config(path: Path, unet_dir: Path) -> Path | None:
    for cand in (path / "scheduler" / "scheduler_config.json", unet_dir / "scheduler_config.json",
                 path / "scheduler_config.json", unet_dir.parent / "scheduler" / "scheduler_config.json"):
        if cand.is_file():
            return cand
    return None


def diffusion_from_scheduler(cfg: dict, origin: str) -> DiffusionConfig:
    """Map a diffusers `DDPMScheduler` config to ours; unsupported settings are a CheckpointError."""

    def pick(key: str, table: dict, default: str) -> str:
        value = cfg.get(key, default)
        if value not in table:
            raise CheckpointError(f"{origin}: {key} {value!r} is not supported (supported: {', '.join(table)})")
        return table[value]

    if cfg.get("trained_betas") is not None:
        raise CheckpointError(f"{origin}: trained_betas are not supported")
    if cfg.get("rescale_betas_zero_snr"):
        raise CheckpointError(f"{origin}: rescale_betas_zero_snr is not supported")
    if cfg.get("thresholding"):
        raise CheckpointError(f"{origin}: dynamic thresholding is not supported")
    if cfg.get("clip_sample", True) and float(cfg.get("clip_sample_range", 1.0)) != 1.0:
        raise CheckpointError(f"{origin}: clip_sample_range {cfg['clip_sample_range']} is not supported: ddpm-bench "
                              "clips the x_0 prediction to [-1, 1] (the data range), or not at all with --no-clip")
    if cfg.get("clip_sample", True) is False:
        print(f"ddpm-bench: warning: {origin}: clip_sample is false: this model's scheduler samples without "
              "clipping the x_0 prediction; pass --no-clip to sample (and bound) as it does", file=sys.stderr)
    return DiffusionConfig(
        T=int(cfg.get("num_train_timesteps", 1000)),
        beta_schedule=pick("beta_schedule", BETA_SCHEDULES, "linear"),
        beta_start=float(cfg.get("beta_start", 1e-4)),
        beta_end=float(cfg.get("beta_end", 0.02)),
        mean_type=pick("prediction_type", PREDICTION_TYPES, "epsilon"),
        var_type=pick("variance_type", VARIANCE_TYPES, "fixed_small"),
    )


def weights_sha256(files: list[Path]) -> str:
    """One sha256 over the weight files: sha256 of the lines 'name sha256' in name order."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        h.update(f"{f.name} {sha256_file(f)}\n".encode())
    return h.hexdigest()


def load_directory(path: str | Path, diffusion_flags: dict, origin: str | None = None,
                   provenance: dict | None = None) -> LoadedModel:
    """Load a diffusers UNet2DModel directory on the CPU; the backbone calls `unet(x, i).sample` with the
    network index i (diffusers' timestep). `origin` names it in its identity and messages (default: its path)."""
    try:
        import diffusers
        from diffusers import UNet2DModel
    except ImportError:
        raise UserError(f"--ckpt {path}: loading a diffusers directory needs diffusers: {INSTALL_HINT}") from None
    path = Path(path)
    unet_dir = find_unet_dir(path)
    files = [f for pattern in WEIGHT_PATTERNS for f in unet_dir.glob(pattern)]
    if not files:
        raise CheckpointError(f"--ckpt {path}: no diffusion_pytorch_model.safetensors or .bin in {unet_dir}")
    sched_path = find_scheduler_config(path, unet_dir)
    if sched_path is not None:
        try:
            sched = json.loads(sched_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{sched_path}: unreadable scheduler config: {e}") from None
        try:
            diffusion = diffusion_from_scheduler(sched, str(sched_path))
        except ValueError as e:
            raise CheckpointError(f"{sched_path}: {e}") from None
        check_flags_match(diffusion, diffusion_flags, f"--ckpt {path} ({sched_path.name})")
    else:
        diffusion = diffusion_from_flags(diffusion_flags)
    try:
        # low_cpu_mem_usage=False: what diffusers falls back to without `accelerate`, said without a notice
        unet = UNet2DModel.from_pretrained(str(unet_dir), low_cpu_mem_usage=False)
    except Exception as e:
        raise CheckpointError(f"--ckpt {path}: diffusers could not load a UNet2DModel: {type(e).__name__}: {e}") from None
    prov = {**(provenance or {}), "kind": NAME, "path": str(path.resolve()), "sha256": weights_sha256(files),
            "weights_files": sorted(f.name for f in files),
            "scheduler_config": str(sched_path.resolve()) if sched_path else None,
            "diffusers": diffusers.__version__}
    return from_module(unet.eval(), diffusion, prov, origin or str(path))


def from_module(unet, diffusion: DiffusionConfig, provenance: dict, origin: str) -> LoadedModel:
    """A UNet2DModel in memory (loaded from a directory, or a user's, which it leaves as it is) with its
    diffusion settings; its output channels must fit the variance type."""
    c_in = int(unet.config.in_channels)
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    want_out = 2 * c_in if diffusion.learned_variance else c_in
    if int(unet.config.out_channels) != want_out:
        raise CheckpointError(f"--ckpt {origin}: the UNet has {unet.config.out_channels} output channels; "
                              f"var type {diffusion.var_type!r} needs {want_out}")
    # its architecture: the config without diffusers' bookkeeping (`_name_or_path` is a path, not an identity)
    config = {"unet": {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}}
    ident = model_identity(NAME, None, state_dict_sha256(unet.state_dict()), diffusion, config, origin)

    def backbone(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return unet(x, i).sample

    return LoadedModel(backbone=backbone, diffusion=diffusion, identity=ident, provenance=provenance,
                       image_shape=(c_in, int(h), int(w)), module=unet, config=config)
