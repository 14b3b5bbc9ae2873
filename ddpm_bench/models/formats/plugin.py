"""A `--model MODULE:CALLABLE` plug-in: CALLABLE() returns a torch module or a callable f(x, t) with x
float32 (N, C, H, W) in the model scale and t int64 (N,) network indices; the diffusion settings come from
the flags. Its identity: its weights' sha256 (when it returns a module with weights), its callable's name
and the sha256 of the file that defines it. A plug-in without weights is identified by its code alone,
marked weak, with a warning. It takes fractional network indices only when the returned object says so
with an attribute `fractional_steps = True`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ddpm_bench.arguments import given
from ddpm_bench.errors import UserError
from ddpm_bench.identity import model_identity, state_dict_sha256
from ddpm_bench.messages import warn
from ddpm_bench.models import plugin_guard
from ddpm_bench.models.formats.common import declared_convention, diffusion_from_flags, with_convention
from ddpm_bench.models.loaded import LoadedModel
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.provenance import sha256_file

NAME = "plugin"


def detect(spec: ModelSpec) -> bool:
    return spec.model is not None


def import_callable(spec: str) -> Callable:
    """MODULE:CALLABLE, where MODULE is an importable module name or a path to a .py file."""
    if ":" not in spec:
        raise UserError(f"{given('plugin', spec)}: expected MODULE:CALLABLE")
    mod_name, _, attr = spec.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            file = Path(mod_name)
            if not file.is_file():
                raise UserError(f"{given('plugin', spec)}: no such file {file}")
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
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - its import runs the user's code, SystemExit included
        raise UserError(f"{given('plugin', spec)}: cannot import {mod_name}: {type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise UserError(f"{given('plugin', spec)}: {mod_name} has no callable {attr!r}")
    return fn


def source_file(factory: Callable) -> Path | None:
    """The .py file that defines `factory`, when there is one."""
    module = sys.modules.get(getattr(factory, "__module__", "") or "")
    file = getattr(module, "__file__", None) or getattr(getattr(factory, "__code__", None), "co_filename", None)
    return Path(file) if file and Path(file).is_file() else None


def load(spec: ModelSpec) -> LoadedModel:
    name = spec.model
    factory = import_callable(name)
    net = plugin_guard.guarded_call(name, factory)  # anything raised in it is the plug-in's error (exit 1)
    if not callable(net):
        raise UserError(f"{given('plugin', name)}: returned {type(net).__name__}, not a module or callable")
    module = net if isinstance(net, torch.nn.Module) else None
    file = source_file(factory)
    if file is None:
        raise UserError(f"{given('plugin', name)}: the file that defines it cannot be found (its code is part of its "
                        "identity); define it in a .py file")
    prov = {"kind": NAME, "callable": name, "sha256": sha256_file(file)}
    diffusion = diffusion_from_flags(spec.diffusion_flags)
    convention = declared_convention(net, diffusion, given("plugin", name))
    # the code is part of the identity: two plug-ins with equal (or no) weights are still two models
    architecture = with_convention({"callable": name.rpartition(":")[2], "source_sha256": prov["sha256"]},
                                   convention)
    state = module.state_dict() if module is not None else {}
    weights_sha256 = state_dict_sha256(state) if state else None
    if weights_sha256 is None:
        what = "a plain function" if module is None else "a module without weights"
        warn(f"{given('plugin', name)} returned {what}: its identity is the hash of {file.name} only, so a change in "
             "what it reads (weights files, globals) is not detected; return a torch.nn.Module that holds its "
             "weights for an identity by its weights")
    ident = model_identity(NAME, None, weights_sha256, diffusion, architecture, name)
    return LoadedModel(backbone=net, diffusion=diffusion, identity=ident, provenance=prov, module=module,
                       fractional_steps=getattr(net, "fractional_steps", False) is True, plugin=name,
                       convention=convention)
