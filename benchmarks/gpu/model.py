"""The model every section measures: the paper's CIFAR-10 U-Net of recipes/cifar10.toml (the smoke plan's
overrides make it tiny) with seeded weights, written as a ddpm-bench checkpoint so that the library, the
command line and a resumed run all load it the way users load theirs (`--ckpt FILE`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from benchmarks.gpu.plan import RECIPE, Plan
from ddpm_bench.checkpoint import save_checkpoint
from ddpm_bench.config import RunConfig, load_recipe
from ddpm_bench.models.formats import load_model
from ddpm_bench.models.loaded import LoadedModel
from ddpm_bench.models.registry import build_model
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.network import Execution, Network

REPO = Path(__file__).resolve().parents[2]
WEIGHT_SEED = 0


def recipe_config(plan: Plan) -> RunConfig:
    return load_recipe(REPO / RECIPE, list(plan.recipe_overrides))


def seeded_unet(cfg: RunConfig, seed: int = WEIGHT_SEED) -> nn.Module:
    """The recipe's U-Net with Glorot-uniform weights from `seed` in every layer. The paper's initialisation
    sets the last layer of each residual branch and the output layer to zero, so an untrained network would
    predict eps = 0 for every input; with those layers drawn as well its output is a non-trivial function
    of x and t, and the precision and solver measurements see real rounding and real dynamics."""
    torch.manual_seed(seed)
    module = build_model(cfg.to_dict()["model"])
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and not bool(layer.weight.any()):
            nn.init.xavier_uniform_(layer.weight)
    return module.eval()


def write_checkpoint(cfg: RunConfig, path: Path, overrides: tuple[str, ...] = ()) -> dict:
    """A ddpm-bench checkpoint of the seeded U-Net (its EMA weights are the same tensors, stored once)."""
    module = seeded_unet(cfg)
    state = module.state_dict()
    save_checkpoint(path, {"config": cfg.to_dict(), "model": state, "ema": state, "step": 0})
    return {"recipe": RECIPE, "overrides": list(overrides), "params": sum(p.numel() for p in module.parameters()),
            "weights": f"Glorot-uniform in every layer, torch seed {WEIGHT_SEED} (untrained)", "T": cfg.diffusion.T}


class Models:
    """Networks of the one checkpoint: a module loaded once for every uncompiled setting (each Network sets
    its memory format when it is made, so make one right before using it), a fresh load for each compiled
    one (a compiled module must keep the format it was compiled with)."""

    def __init__(self, ckpt: Path, device: torch.device):
        self.ckpt, self.device = ckpt, device
        self._loaded: LoadedModel | None = None

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(ckpt=str(self.ckpt))

    def network(self, precision: str = "fp32", channels_last: bool | None = None, compile: str | None = None) -> Network:
        execution = Execution(device=str(self.device), precision=precision, channels_last=channels_last,
                              compile=compile)
        if compile is not None:
            return Network(load_model(self.spec), execution)
        if self._loaded is None:
            self._loaded = load_model(self.spec)
        return Network(self._loaded, execution)
