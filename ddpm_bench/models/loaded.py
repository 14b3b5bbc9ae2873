"""A model as its format loaded it (`ddpm_bench.models.formats`), before it runs anywhere: the backbone,
the diffusion settings it was trained with, its identity and provenance, and how it takes its timestep.
`ddpm_bench.network.Network` runs it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.errors import UserError
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


def check_module_parameters(module: torch.nn.Module, origin: str) -> None:
    """A module given in memory holds float32 weights on one real device: anything else is one UserError that
    says what to do (instead of torch's error at the first call)."""
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.is_meta for t in tensors):
        raise UserError(f"model {origin}: its parameters are on the meta device and hold no weights; load them "
                        "first (module.to_empty(device='cpu'), then module.load_state_dict(...))")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise UserError(f"model {origin}: its parameters are on several devices ({', '.join(map(str, devices))}); "
                        "move it to one (module.to(device))")
    dtypes = {t.dtype for t in module.parameters() if t.is_floating_point()}
    if dtypes & {torch.float16, torch.bfloat16}:
        raise UserError(f"model {origin}: its parameters are {', '.join(sorted(map(str, dtypes)))}; ddpm-bench runs "
                        "the network with float32 weights (precision='bf16' or 'tf32' for lower precision inside): "
                        "give a float32 copy (copy.deepcopy(module).float())")
