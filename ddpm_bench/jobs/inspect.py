"""`ddpm-bench inspect`: what a checkpoint or a recipe holds, as one JSON object on stdout."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from ddpm_bench.checkpoint import load_checkpoint
from ddpm_bench.config import load_recipe
from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.errors import CheckpointError
from ddpm_bench.identity import model_identity, state_dict_sha256
from ddpm_bench.models import build_model
from ddpm_bench.models.source import ckpt_file
from ddpm_bench.provenance import sha256_file
from ddpm_bench.shards import to_json


def count_params(model_config: dict) -> int:
    """Number of parameters of the network a config describes (built without memory on 'meta')."""
    with torch.device("meta"):
        model = build_model(model_config)
    return sum(p.numel() for p in model.parameters())


def inspect_recipe(recipe: str, overrides: list[str] = ()) -> dict:
    config = load_recipe(recipe, overrides).to_dict()
    return {"recipe": str(Path(recipe).resolve()), "params": count_params(config["model"]), "config": config}


def inspect_ckpt(ckpt_arg: str) -> dict:
    path, _ = ckpt_file(ckpt_arg)
    ckpt = load_checkpoint(path)
    try:
        params = count_params(ckpt["config"]["model"])
        identities = model_identities(str(path), ckpt)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"--ckpt {path}: invalid stored model config: {e}") from None
    stored = sum(v.numel() for v in ckpt["model"].values()) if isinstance(ckpt["model"], dict) else None
    return {"ckpt": str(path.resolve()), "format": ckpt["format"], "step": int(ckpt["step"]),
            "sha256": sha256_file(path), "params": params, "stored_tensor_elements": stored,
            "model_identity": identities, "config": ckpt["config"], "data": ckpt.get("data")}


def model_identities(path: str, ckpt: dict) -> dict[str, str]:
    """The model identity (ddpm_bench.identity) of each of the checkpoint's weights, ema and raw: what every
    output computed from them names in `model.identity.sha256`."""
    diffusion = DiffusionConfig(**{f.name: ckpt["config"]["diffusion"][f.name] for f in fields(DiffusionConfig)
                                   if f.name in ckpt["config"]["diffusion"]})
    return {w: model_identity("ckpt", w, state_dict_sha256(ckpt[key]), diffusion, ckpt["config"]["model"],
                           path).sha256
            for w, key in (("ema", "ema"), ("raw", "model"))}


def run_inspect(ckpt: str | None, recipe: str | None, overrides: list[str] = ()) -> int:
    info = inspect_ckpt(ckpt) if ckpt is not None else inspect_recipe(recipe, overrides)
    print(to_json(info), end="")
    return 0
