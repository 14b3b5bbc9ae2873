"""The networks a checkpoint or recipe can name (`config["model"]["name"]`): a table of builders, each a
function of the config's other keys."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm_bench.models.unet import build_unet

BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {"unet": build_unet}


def build_model(model_config: dict) -> torch.nn.Module:
    """Build a network from `config["model"]` of a checkpoint or recipe: {"name": ..., **arguments}; a
    ValueError naming the field for an unknown name or an invalid argument."""
    cfg = dict(model_config)
    name = cfg.pop("name", None)
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name](**cfg)
