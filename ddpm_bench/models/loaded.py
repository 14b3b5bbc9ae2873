"""A model as its format loaded it (`ddpm_bench.models.formats`), before it runs anywhere: the backbone,
the diffusion settings it was trained with, its identity and provenance, and how it takes its timestep.
`ddpm_bench.network.Network` runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.identity import ModelIdentity
from ddpm_bench.noise_level import NoiseConvention


def network_index(i: torch.Tensor) -> torch.Tensor:
    """The timestep input of most backbones: the 0-based network index i = t - 1 as it is (int64, or
    float64 for a fractional index)."""
    return i


@dataclass
class LoadedModel:
    backbone: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # f(x float32 (N, C, H, W), timestep input (N,))
    diffusion: DiffusionConfig
    identity: ModelIdentity  # what every number computed with it is tied to
    provenance: dict  # where it was found, for a human reader: kind, path or callable, file sha256, step
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) when the format knows it
    module: torch.nn.Module | None = None  # the torch module behind `backbone`, if any
    config: dict | None = None  # the stored architecture/training config, if any
    timestep_input: Callable[[torch.Tensor], torch.Tensor] = network_index  # network index -> backbone input
    fractional_steps: bool = True  # whether the backbone takes a fractional network index (the ODE needs it)
    plugin: str | None = None  # MODULE:CALLABLE of a user's plug-in: what goes wrong in it is its own error
    # how the backbone takes its noise level and what it predicts (ddpm_bench.noise_level); the default is a
    # discrete DDPM's: the network index, and its DiffusionConfig's mean type
    convention: NoiseConvention = field(default_factory=NoiseConvention)
    # the caller's own object (given to the Python API in memory): `Network` leaves it as it found it, and
    # `reidentify` gives its identity anew when its weights changed since (a training loop's module)
    borrowed: bool = False
    reidentify: Callable[[], ModelIdentity] | None = None

    def describe(self) -> dict:
        """The `model` entry of every output: where it came from and its identity."""
        return {**self.provenance, "identity": self.identity.to_dict()}
