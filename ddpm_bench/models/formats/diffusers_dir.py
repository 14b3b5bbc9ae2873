"""A diffusers `UNet2DModel` directory (`--ckpt DIR`; optional extra `diffusers`).

This is the format of the converted official DDPM checkpoints on the Hugging Face hub, e.g.
google/ddpm-cifar10-32 (the paper's CIFAR-10 model): `config.json` and `diffusion_pytorch_model.*`,
with the `DDPMScheduler` settings in `scheduler_config.json` beside them, or a pipeline folder with
`unet/` and `scheduler/` subfolders.

The scheduler's settings map to `DiffusionConfig` (T = num_train_timesteps; beta_schedule linear ->
`linear`, scaled_linear -> `quad`, squaredcos_cap_v2 -> `cosine`; prediction_type epsilon -> `eps`,
sample -> `x0`, v_prediction -> `v`; clip_sample_range other than 1 is refused, clip_sample = false is
warned about (`--no-clip` samples as such a scheduler does); variance_type fixed_small[_log] ->
`fixed-small`, fixed_large[_log] -> `fixed-large`, learned_range -> `learned-range`). Without a scheduler
config the model's schedule is unknown: the diffusion flags give it (the paper's settings for those not
given), and without any of them the model is refused rather than evaluated with a guessed schedule.

The UNet's config.json must describe its weights: a tensor of another shape, one the config needs and
the weights lack (diffusers would initialise it at random) or one the weights hold and the config does
not use is refused in one line.

Variance convention at t = 1: diffusers' `fixed_large` uses beta_1 as the variance of p(x_0 | x_1),
whereas ddpm-bench follows the official TF code, whose entry for i = 0 is the posterior variance at
i = 1 ("better decoder log likelihood"). Sampling adds no noise at t = 1, so samples are unaffected;
the bound's decoder term L_0 uses the official convention, as the paper's numbers did. Likewise
`fixed_small` at i = 0 is the clipped posterior variance (entry of i = 1) instead of diffusers' 1e-20.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ddpm_bench.arguments import given, say
from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.errors import CheckpointError, UserError
from ddpm_bench.identity import model_identity, state_dict_sha256
from ddpm_bench.messages import warn
from ddpm_bench.models.formats.common import check_flags_match, diffusion_from_flags
from ddpm_bench.models.loaded import LoadedModel
from ddpm_bench.models.spec import DIFFUSION_FLAGS, ModelSpec
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
    raise CheckpointError(f"{given('source', path)}: no config.json of a diffusers UNet2DModel (in it or in unet/)")


def find_scheduler_config(path: Path, unet_dir: Path) -> Path | None:
    for cand in (path / "scheduler" / "scheduler_config.json", unet_dir / "scheduler_config.json",
                 path / "scheduler_config.json", unet_dir.parent / "scheduler" / "scheduler_config.json"):
        if cand.is_file():
            return cand
    return None


def read_scheduler_config(path: Path) -> dict:
    """A scheduler_config.json as a dict; CheckpointError naming the file when it is no JSON object."""
    try:
        sched = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {e.start}): not a scheduler config (a JSON object)") \
            from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable scheduler config: {e}") from None
    if not isinstance(sched, dict):
        raise CheckpointError(f"{path}: a JSON {type(sched).__name__}, not a scheduler config (a JSON object)")
    return sched


def diffusion_without_scheduler(path: Path, diffusion_flags: dict) -> DiffusionConfig:
    """The diffusion settings of a model without a scheduler config: the diffusion flags given (the paper's
    for the others); none given is a CheckpointError, as the schedule the model was trained with is unknown."""
    if not any(v is not None for v in diffusion_flags.values()):
        raise CheckpointError(f"{given('source', path)}: no scheduler_config.json (in scheduler/ or beside the UNet's "
                              "config.json), so the model's noise schedule is unknown; give the settings it was "
                              "trained with: " + say(", ".join(DIFFUSION_FLAGS.values()),
                                                     "diffusion={'T': ..., 'beta_schedule': ..., 'beta_start': ..., "
                                                     "'beta_end': ..., 'mean_type': ..., 'var_type': ...}"))
    return diffusion_from_flags(diffusion_flags)


def load_unet(unet_class, unet_dir: Path, origin: str):
    """The UNet2DModel of `unet_dir`, whose config.json must describe its weights; one CheckpointError line
    otherwise (diffusers' own messages run to a line per tensor, and it initialises missing tensors at random
    with only a logged warning)."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its per-tensor warnings: summarised below
    try:
        # low_cpu_mem_usage=False: what diffusers falls back to without `accelerate`, said without a notice
        unet, info = unet_class.from_pretrained(str(unet_dir), low_cpu_mem_usage=False, output_loading_info=True,
                                                ignore_mismatched_sizes=True)
    except Exception as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()] or [""]
        more = f" ({len(lines) - 1} more lines)" if len(lines) > 1 else ""
        raise CheckpointError(f"{given('source', origin)}: diffusers could not load a UNet2DModel: {type(e).__name__}: "
                              f"{lines[0][:300]}{more}") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    problems = weight_mismatches(info)
    if problems:
        raise CheckpointError(f"{given('source', origin)}: {unet_dir / 'config.json'} does not describe its weights: "
                              f"{'; '.join(problems)}")
    return unet


def _shape(size) -> str:
    return f"({', '.join(str(int(d)) for d in size)}{',' if len(size) == 1 else ''})"


def weight_mismatches(info: dict) -> list[str]:
    """What diffusers' loading info says does not fit (empty: the weights are the config's), in words."""
    problems = []
    mismatched = list(info.get("mismatched_keys") or [])
    if mismatched:
        name, have, want = mismatched[0]
        problems.append(f"{len(mismatched)} of its tensors have other shapes than the config makes (first: {name} "
                        f"{_shape(have)} in the weights, {_shape(want)} by the config)")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        problems.append(f"{len(missing)} tensors the config makes are not in the weights (first: {missing[0]})")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        problems.append(f"{len(unexpected)} tensors of the weights are not in the config (first: {unexpected[0]})")
    errors = [str(m).strip().splitlines()[0] for m in info.get("error_msgs") or [] if str(m).strip()]
    if errors:
        problems.append(f"{len(errors)} loading errors (first: {errors[0][:200]})")
    return problems


def diffusion_from_scheduler(cfg: dict, origin: str) -> DiffusionConfig:
    """Map a diffusers `DDPMScheduler` config to ours; unsupported settings are a CheckpointError."""

    def pick(key: str, table: dict, default: str) -> str:
        value = cfg.get(key, default)
        if not isinstance(value, str) or value not in table:
            raise CheckpointError(f"{origin}: {key} {value!r} is not supported (supported: {', '.join(table)})")
        return table[value]

    def number(key: str, default: float, integer: bool = False) -> float:
        value = cfg.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (integer and not float(value).is_integer()):
            raise CheckpointError(f"{origin}: {key} is {value!r}, not {'an integer' if integer else 'a number'}")
        return int(value) if integer else float(value)

    if cfg.get("trained_betas") is not None:
        raise CheckpointError(f"{origin}: trained_betas are not supported")
    if cfg.get("rescale_betas_zero_snr"):
        raise CheckpointError(f"{origin}: rescale_betas_zero_snr is not supported")
    if cfg.get("thresholding"):
        raise CheckpointError(f"{origin}: dynamic thresholding is not supported")
    if cfg.get("clip_sample", True) and number("clip_sample_range", 1.0) != 1.0:
        raise CheckpointError(f"{origin}: clip_sample_range {cfg['clip_sample_range']} is not supported: ddpm-bench "
                              "clips the x_0 prediction to [-1, 1] (the data range), or not at all with --no-clip")
    if cfg.get("clip_sample", True) is False:
        warn(f"{origin}: clip_sample is false: this model's scheduler samples without clipping the x_0 prediction; "
             f"{say('pass --no-clip', 'pass clip=False')} to sample (and bound) as it does")
    return DiffusionConfig(
        T=number("num_train_timesteps", 1000, integer=True),
        beta_schedule=pick("beta_schedule", BETA_SCHEDULES, "linear"),
        beta_start=number("beta_start", 1e-4),
        beta_end=number("beta_end", 0.02),
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
        raise UserError(f"{given('source', path)}: loading a diffusers directory needs diffusers: {INSTALL_HINT}") from None
    path = Path(path)
    unet_dir = find_unet_dir(path)
    files = [f for pattern in WEIGHT_PATTERNS for f in unet_dir.glob(pattern)]
    if not files:
        raise CheckpointError(f"{given('source', path)}: no diffusion_pytorch_model.safetensors or .bin in {unet_dir}")
    sched_path = find_scheduler_config(path, unet_dir)
    if sched_path is not None:
        sched = read_scheduler_config(sched_path)
        try:
            diffusion = diffusion_from_scheduler(sched, str(sched_path))
        except (TypeError, ValueError) as e:  # a value of another type or out of range
            raise CheckpointError(f"{sched_path}: {e}") from None
        check_flags_match(diffusion, diffusion_flags, f"{given('source', path)} ({sched_path.name})")
    else:
        diffusion = diffusion_without_scheduler(origin or path, diffusion_flags)
    unet = load_unet(UNet2DModel, unet_dir, origin or str(path))
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
        raise CheckpointError(f"{given('source', origin)}: the UNet has {unet.config.out_channels} output channels; "
                              f"var type {diffusion.var_type!r} needs {want_out}")
    # its architecture: the config without diffusers' bookkeeping (`_name_or_path` is a path, not an identity)
    config = {"unet": {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}}
    ident = model_identity(NAME, None, state_dict_sha256(unet.state_dict()), diffusion, config, origin)

    def backbone(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return unet(x, i).sample

    return LoadedModel(backbone=backbone, diffusion=diffusion, identity=ident, provenance=provenance,
                       image_shape=(c_in, int(h), int(w)), module=unet, config=config)
