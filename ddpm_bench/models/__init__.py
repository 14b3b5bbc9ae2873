"""Networks: the paper's U-Net and the registry that builds a model from its config."""

from __future__ import annotations

from collections.abc import Callable

import torch

# a network: net(x, i) on float32 (N, C, H, W) model-scale inputs and int64 (N,) network indices
Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {}


def register_model(name: str):
    """Register a builder under `name`; a duplicate name is an error."""

    def deco(fn: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = fn
        return fn

    return deco


def build_model(model_config: dict) -> torch.nn.Module:
    """Build a network from `config["model"]` of a checkpoint or recipe: {"name": ..., **arguments}."""
    from ddpm_bench.models import unet  # noqa: F401  (registers "unet")

    cfg = dict(model_config)
    name = cfg.pop("name", None)
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    if name == "unet":  # the recipe's checks for every config, a checkpoint's stored one included
        from ddpm_bench.config import ModelConfig

        ModelConfig(name=name, **{**cfg, "out_channels": cfg.get("out_channels") or 0})  # ValueError: model.FIELD
    return _BUILDERS[name](**cfg)
