"""Where the network comes from: a ddpm-bench checkpoint (`--ckpt`) or a plug-in (`--model MODULE:CALLABLE`).

Both give a `ModelSource`: a callable net(x, i) on float32 (N, C, H, W) model-scale inputs and int64
(N,) network indices, the diffusion settings it was trained with, and its provenance.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

import ddpm_bench.models.plugin_guard as plugin_guard
from ddpm_bench.checkpoint import load_checkpoint
from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.errors import CheckpointError, UserError
from ddpm_bench.identity import ModelIdentity, model_identity, state_dict_sha256
from ddpm_bench.models import Net
from ddpm_bench.models.packaged import packaged_checkpoint
from ddpm_bench.provenance import sha256_file

# flag name on the command line -> DiffusionConfig field
DIFFUSION_FLAGS = {
    "T": "--T",
    "beta_schedule": "--beta-schedule",
    "beta_start": "--beta-start",
    "beta_end": "--beta-end",
    "mean_type": "--mean-type",
    "var_type": "--var-type",
}


@dataclass
class ModelSource:
    net: Net
    diffusion: DiffusionConfig
    identity: ModelIdentity  # what every number computed with `net` is tied to
    provenance: dict  # where it was found, for a human reader: kind, path / callable, file sha256, step
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) when the source knows it
    module: torch.nn.Module | None = None
    config: dict | None = None  # the checkpoint's stored config

    def describe(self) -> dict:
        """The `model` entry of every output: where it came from and its identity."""
        return {**self.provenance, "identity": self.identity.to_dict()}


def diffusion_from_flags(flags: dict) -> DiffusionConfig:
    """DiffusionConfig from the flags that were given (None = not given -> paper default)."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return DiffusionConfig(**given)
    except ValueError as e:
        raise UserError(str(e)) from None


def check_flags_match(stored: DiffusionConfig, flags: dict, origin: str) -> None:
    """A flag given explicitly that contradicts the stored settings is an error (exit 2)."""
    for name, value in flags.items():
        if value is None:
            continue
        have = getattr(stored, name)
        if (float(value) != float(have)) if isinstance(have, float) else (value != have):
            raise UserError(f"{DIFFUSION_FLAGS[name]} {value} contradicts {origin}, which was trained with {have}")


def ckpt_file(ckpt: str | Path) -> tuple[Path, str | None]:
    """What `--ckpt` names: a packaged model's checked file (and its name), the latest checkpoint of a
    train or reproduce run directory, or the path as given (a file, or a diffusers directory)."""
    packaged_file = packaged_checkpoint(str(ckpt))
    if packaged_file is not None:
        return packaged_file, str(ckpt)
    path = Path(ckpt)
    if path.is_dir() and (path / "checkpoints").is_dir():
        latest = sorted((path / "checkpoints").glob("ckpt_*.pt"))
        if not latest:
            raise CheckpointError(f"--ckpt {path}: a training run without checkpoints yet")
        print(f"ddpm-bench: --ckpt {path}: a training run; using its latest checkpoint {latest[-1]}", file=sys.stderr)
        return latest[-1], None
    return path, None


def load_ckpt_source(path: str | Path, weights: str = "ema", diffusion_flags: dict | None = None,
                     device: str | torch.device = "cpu") -> ModelSource:
    """A ddpm-bench checkpoint file, a packaged model's name (`embedded`), or a diffusers UNet2DModel
    directory (optional extra)."""
    path, packaged = ckpt_file(path)
    if path.is_dir():
        from ddpm_bench.models.diffusers_loading import load_diffusers_source

        return load_diffusers_source(path, diffusion_flags or {}, device)
    from ddpm_bench.models import build_model

    ckpt = load_checkpoint(path)
    config = ckpt["config"]
    try:
        known = {f.name for f in fields(DiffusionConfig)}
        diffusion = DiffusionConfig(**{k: v for k, v in config["diffusion"].items() if k in known})
        module = build_model(config["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"--ckpt {path}: invalid stored config: {e}") from None
    check_flags_match(diffusion, diffusion_flags or {}, f"--ckpt {path}")
    if weights not in ("ema", "raw"):
        raise UserError(f"--weights must be 'ema' or 'raw', got {weights!r}")
    state = ckpt["ema"] if weights == "ema" else ckpt["model"]
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"--ckpt {path}: {weights} weights do not fit the stored architecture: "
                              f"{str(e).splitlines()[0]}") from None
    module.to(device).eval()
    mcfg = config["model"]
    shape = (int(mcfg["in_channels"]), int(mcfg["image_size"]), int(mcfg["image_size"])) \
        if "in_channels" in mcfg and "image_size" in mcfg else None
    prov = {"kind": "ckpt", "path": str(path.resolve()), "sha256": sha256_file(path), "weights": weights,
            "step": int(ckpt["step"]), **({"packaged": packaged} if packaged else {})}
    ident = model_identity("ckpt", weights, state_dict_sha256(state), diffusion, config["model"], str(path))
    return ModelSource(net=module, diffusion=diffusion, identity=ident, provenance=prov, image_shape=shape,
                       module=module, config=config)


def _import_callable(spec: str) -> Callable:
    """MODULE:CALLABLE, where MODULE is an importable module name or a path to a .py file."""
    if ":" not in spec:
        raise UserError(f"--model {spec}: expected MODULE:CALLABLE")
    mod_name, _, attr = spec.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            file = Path(mod_name)
            if not file.is_file():
                raise UserError(f"--model {spec}: no such file {file}")
            folder = str(file.resolve().parent)  # its own folder, for the modules beside it
            if folder not in sys.path:
                sys.path.insert(0, folder)
            mspec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(mod_name)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"--model {spec}: cannot import {mod_name}: {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise UserError(f"--model {spec}: {mod_name} has no callable {attr!r}")
    return fn


def load_plugin_source(spec: str, diffusion_flags: dict, device: str | torch.device = "cpu") -> ModelSource:
    factory = _import_callable(spec)
    net = plugin_guard.call_factory(spec, factory)  # an exception in it is the plug-in's error (exit 1)
    if not callable(net):
        raise UserError(f"--model {spec}: returned {type(net).__name__}, not a module or callable")
    module = net if isinstance(net, torch.nn.Module) else None
    if module is not None:
        module.to(device).eval()
    prov = {"kind": "plugin", "callable": spec}
    source_file = _source_file(factory)
    if source_file is None:
        raise UserError(f"--model {spec}: the file that defines it cannot be found (its code is part of its "
                        "identity); define it in a .py file")
    prov["sha256"] = sha256_file(source_file)
    diffusion = diffusion_from_flags(diffusion_flags)
    # the code is part of the identity: two plug-ins with equal (or no) weights are still two models
    architecture = {"callable": spec.rpartition(":")[2], "source_sha256": prov["sha256"]}
    state = module.state_dict() if module is not None else {}
    weights_sha256 = state_dict_sha256(state) if state else None
    if weights_sha256 is None:
        what = "a plain function" if module is None else "a module without weights"
        print(f"ddpm-bench: warning: --model {spec} returned {what}: its identity is the hash of "
              f"{source_file.name} only, so a change in what it reads (weights files, globals) is not detected; "
              "return a torch.nn.Module that holds its weights for an identity by its weights", file=sys.stderr)
    ident = model_identity("plugin", None, weights_sha256, diffusion, architecture, spec)
    return ModelSource(net=net, diffusion=diffusion, identity=ident, provenance=prov, module=module)


def _source_file(factory: Callable) -> Path | None:
    """The .py file that defines `factory`, when there is one."""
    module = sys.modules.get(getattr(factory, "__module__", "") or "")
    file = getattr(module, "__file__", None) or getattr(getattr(factory, "__code__", None), "co_filename", None)
    return Path(file) if file and Path(file).is_file() else None


@dataclass(frozen=True)
class ModelSpec:
    """Where the model comes from, as the command line or a recipe says it: exactly one of `ckpt` and
    `model`, which weights of a checkpoint, and the diffusion flags (None = not given)."""

    ckpt: str | None = None
    model: str | None = None
    weights: str = "ema"
    diffusion_flags: dict = field(default_factory=dict)

    def load(self, device: str | torch.device = "cpu") -> ModelSource:
        return load_model_source(self.ckpt, self.model, self.weights, self.diffusion_flags, device)


def load_model_source(ckpt: str | None, model: str | None, weights: str = "ema",
                      diffusion_flags: dict | None = None, device: str | torch.device = "cpu") -> ModelSource:
    """Exactly one of `ckpt` and `model`."""
    if (ckpt is None) == (model is None):
        raise UserError("give exactly one of --ckpt PATH and --model MODULE:CALLABLE")
    flags = diffusion_flags or {}
    if ckpt is not None:
        return load_ckpt_source(ckpt, weights, flags, device)
    return plugin_guard.guard_source(model, load_plugin_source(model, flags, device))
