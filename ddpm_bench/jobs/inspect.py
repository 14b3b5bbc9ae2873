"""`ddpm-bench inspect`: what a model or a recipe holds, as one JSON object on stdout. `--ckpt` takes
everything the other commands take (a checkpoint, a run directory, `embedded`, a diffusers directory, a Hub
id, an improved-diffusion checkpoint with its `--flags`):
its format says what it can (a ddpm-bench checkpoint: its step and both weights' identities), and every
model gives its parameter count, identity and diffusion settings."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ddpm_bench.config import load_recipe
from ddpm_bench.models.formats import format_of
from ddpm_bench.models.registry import build_model
from ddpm_bench.models.spec import ModelSpec


def count_params(model_config: dict) -> int:
    """Number of parameters of the network a config describes (built without memory on 'meta')."""
    with torch.device("meta"):
        model = build_model(model_config)
    return sum(p.numel() for p in model.parameters())


def inspect_recipe(recipe: str, overrides: list[str] = ()) -> dict:
    config = load_recipe(recipe, overrides).to_dict()
    return {"recipe": str(Path(recipe).resolve()), "params": count_params(config["model"]), "config": config}


def inspect_model(spec: ModelSpec) -> dict:
    """The format's own description where it has one, else the loaded model's."""
    fmt = format_of(spec)
    if hasattr(fmt, "inspect"):
        return fmt.inspect(spec)
    model = fmt.load(spec)
    params = sum(p.numel() for p in model.module.parameters()) if model.module is not None else None
    return {"ckpt": spec.ckpt, "kind": fmt.NAME, "params": params, "model_identity": model.identity.sha256,
            "provenance": model.provenance, "diffusion": asdict(model.diffusion),
            "image_shape": list(model.image_shape) if model.image_shape else None, "config": model.config}
