"""A model given in memory through the Python API: a torch module or a callable f(x, t) with its diffusion
settings, or a diffusers `UNet2DModel` with its scheduler. Its identity is its weights' sha256 (a module
with weights), its class (or function) name and the sha256 of the file that defines it; one without
weights is identified by its code alone (weak), as a `--model` plug-in."""

from __future__ import annotations

import inspect as pyinspect
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import torch

from ddpm_bench.arguments import named
from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.errors import UserError
from ddpm_bench.identity import ModelIdentity, model_identity, state_dict_sha256
from ddpm_bench.messages import warn
from ddpm_bench.models.formats import diffusers_dir
from ddpm_bench.models.formats.common import declared_convention, diffusion_from_flags, with_convention
from ddpm_bench.models.loaded import LoadedModel, check_module_parameters
from ddpm_bench.provenance import sha256_file

NAME = "memory"


def is_diffusers_unet(obj) -> bool:
    return type(obj).__name__ == "UNet2DModel" and type(obj).__module__.startswith("diffusers")


def _defining_file(obj) -> Path | None:
    target = obj if pyinspect.isfunction(obj) or pyinspect.isclass(obj) else type(obj)
    try:
        file = pyinspect.getsourcefile(target)
    except (TypeError, OSError):
        file = None
    return Path(file) if file and Path(file).is_file() else None


def from_object(obj: Callable, diffusion: DiffusionConfig | dict | None = None, scheduler=None,
                image_shape: tuple[int, int, int] | None = None) -> LoadedModel:
    """A LoadedModel of an object in memory (see the module docstring)."""
    if is_diffusers_unet(obj):
        check_module_parameters(obj, f"{type(obj).__name__} (in memory)")
        if scheduler is not None:
            config = dict(getattr(scheduler, "config", scheduler))
            diffusion = diffusers_dir.diffusion_from_scheduler(config, f"scheduler {type(scheduler).__name__}")
        elif not isinstance(diffusion, DiffusionConfig):
            diffusion = _diffusion(diffusion)
        loaded = diffusers_dir.from_module(obj, diffusion, {"kind": diffusers_dir.NAME, "in_memory": True},
                                           f"{type(obj).__name__} (in memory)")
        again = lambda: diffusers_dir.from_module(obj, diffusion, loaded.provenance, loaded.identity.origin).identity  # noqa: E731
        return replace(loaded, borrowed=True, reidentify=again)
    if scheduler is not None:
        raise UserError("scheduler= goes with a diffusers UNet2DModel; give a torch module's settings as diffusion=")
    if not callable(obj):
        raise UserError(f"load_model: {type(obj).__name__} is not a torch module or a callable f(x, t)")
    diffusion = diffusion if isinstance(diffusion, DiffusionConfig) else _diffusion(diffusion)
    module = obj if isinstance(obj, torch.nn.Module) else None
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    if module is not None:
        check_module_parameters(module, f"{name} (in memory)")
    file = _defining_file(obj)
    origin = f"{name} (in memory)"
    convention = declared_convention(obj, diffusion, origin)
    architecture = with_convention({"callable": name, "source_sha256": sha256_file(file) if file else None},
                                   convention)

    def identity() -> ModelIdentity:
        state = module.state_dict() if module is not None else {}
        return model_identity(NAME, None, state_dict_sha256(state) if state else None, diffusion, architecture,
                              origin)

    ident = identity()
    if ident.weights_sha256 is None:
        warn(f"{name} has no weights: its identity is its code only, so a change in what it reads is not detected")
    prov = {"kind": NAME, "callable": name, "source_file": str(file) if file else None}
    return LoadedModel(backbone=obj, diffusion=diffusion, identity=ident, provenance=prov, image_shape=image_shape,
                       module=module, fractional_steps=getattr(obj, "fractional_steps", False) is True,
                       borrowed=True, reidentify=identity, convention=convention)


def _diffusion(settings: dict | None) -> DiffusionConfig:
    """The `diffusion=` of a model given in memory: a DiffusionConfig, or its fields by name."""
    if isinstance(settings, DiffusionConfig):
        return settings
    known = [f.name for f in fields(DiffusionConfig)]
    if settings is not None and not isinstance(settings, dict):
        raise UserError(f"{named('diffusion')} must be a dict of the diffusion settings ({', '.join(known)}), got "
                        f"{type(settings).__name__}")
    if unknown := [k for k in settings or {} if k not in known]:
        raise UserError(f"{named('diffusion')} has no setting {unknown[0]!r} (its settings: {', '.join(known)})")
    return diffusion_from_flags(dict(settings or {}))
