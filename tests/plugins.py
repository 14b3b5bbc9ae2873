"""Model plug-ins for tests (`--model tests/plugins.py:NAME`)."""

from __future__ import annotations

import numpy as np
import torch

from ddpm_bench.identity import model_identity
from ddpm_bench.models.loaded import LoadedModel
from ddpm_bench.network import Execution, Network
from ddpm_bench.schedule import make_schedule


def as_network(fn, cfg, channels_last: bool = False, precision: str = "fp32") -> Network:
    """A test's callable or module as the Network the math takes (CPU, contiguous unless asked), with an
    identity of its own (tests of the math do not need one by content)."""
    module = fn if isinstance(fn, torch.nn.Module) else None
    ident = model_identity("test", None, None, cfg, {"test": getattr(fn, "__qualname__", type(fn).__name__)}, "test")
    model = LoadedModel(backbone=fn, diffusion=cfg, identity=ident, provenance={"kind": "test"}, module=module)
    return Network(model, Execution(device="cpu", channels_last=channels_last, precision=precision))

# The single image of the oracle data set: every value of the 0..255 range appears, edges included.
ORACLE_IMAGE = (np.arange(3 * 8 * 8, dtype=np.int64) * 37 % 256).astype(np.uint8).reshape(1, 8, 8, 3)
ORACLE_IMAGE[0, 0, 0] = [0, 255, 128]


def oracle_eps(image_nhwc: np.ndarray = ORACLE_IMAGE, T: int = 1000, schedule: str = "linear"):
    """The exact denoiser of a point mass at c: eps(x_t) = (x_t - sqrt(abar_t) c) / sqrt(1 - abar_t)."""
    s = make_schedule(schedule, T)
    c = torch.from_numpy(image_nhwc[0]).permute(2, 0, 1).to(torch.float64) / 127.5 - 1.0

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = s.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
        b = s.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
        return ((x.to(torch.float64) - a * c) / b).to(torch.float32)

    return net


def oracle_eps_T20():
    return oracle_eps(T=20)


class TinyConv(torch.nn.Module):
    """A small seeded conv net with a time input: not a good model, a deterministic one."""

    def __init__(self, channels: int = 3, out_channels: int = 3, T: int = 1000):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Embedding(T, 8)
        self.conv1 = torch.nn.Conv2d(channels + 8, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, out_channels, 3, padding=1)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e = self.embed(t)[:, :, None, None].expand(-1, -1, *x.shape[2:])
        return self.conv2(torch.nn.functional.silu(self.conv1(torch.cat([x, e], 1))))


def tiny_conv():
    return TinyConv()


def tiny_conv_T20():
    return TinyConv(T=20)


def tiny_conv_learned_T20():
    return TinyConv(out_channels=6, T=20)


def nan_model():
    def net(x, t):
        out = torch.zeros_like(x)
        out[t == 7] = float("nan")
        return out

    return net


def wrong_shape_model():
    return lambda x, t: x[:, :1]


class ViewingModule(torch.nn.Module):
    """Flattens its input with `.view`, which a channels-last input does not allow."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (self.scale * x.view(x.shape[0], -1)).view(x.shape)


def viewing_module():
    return ViewingModule()


def zero_eps():
    return lambda x, t: torch.zeros_like(x)


def oracle_v_T20():
    """The exact denoiser of `oracle_eps`, predicting v = sqrt(abar) eps - sqrt(1 - abar) c (mean type v)."""
    s = make_schedule("linear", 20)
    c = torch.from_numpy(ORACLE_IMAGE[0]).permute(2, 0, 1).to(torch.float64) / 127.5 - 1.0
    eps_net = oracle_eps(T=20)

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = s.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1)
        b = s.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
        return (a * eps_net(x, t).to(torch.float64) - b * c).to(torch.float32)

    return net


class GaussianOracle(torch.nn.Module):
    """The exact eps of data N(mu, s^2) per dimension, diffused: eps(x, abar) = sqrt(1 - abar) (x - sqrt(abar)
    mu) / (abar s^2 + 1 - abar), at integer and fractional network indices (abar from the noise level
    interpolated in log sigma, as the probability-flow ODE does), so its ODE likelihood is known in closed
    form (docs/likelihood.md)."""

    fractional_steps = True

    def __init__(self, T: int = 100, schedule: str = "linear", mu: float = 0.1, s: float = 0.5):
        super().__init__()
        from ddpm_bench.noise_level import noise_levels

        self.mu = torch.nn.Parameter(torch.tensor(mu, dtype=torch.float64), requires_grad=False)
        self.s = s
        self.register_buffer("sigmas", noise_levels(make_schedule(schedule, T).alphas_cumprod))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from ddpm_bench.noise_level import noise_level_at

        sigma = noise_level_at(t.to(torch.float64), self.sigmas).reshape(-1, 1, 1, 1)
        abar = 1.0 / (1.0 + sigma**2)
        x = x.to(torch.float64)
        eps = torch.sqrt(1 - abar) * (x - torch.sqrt(abar) * self.mu) / (abar * self.s**2 + 1 - abar)
        return eps.to(torch.float32)


def gaussian_oracle_T100():
    return GaussianOracle(T=100)


def gaussian_oracle_cosine_T100():
    return GaussianOracle(T=100, schedule="cosine")


def tiny_conv_T20_fractional():
    """TinyConv with a sinusoidal time input instead of a table: it takes fractional network indices."""
    return FractionalTinyConv(T=20)


class FractionalTinyConv(torch.nn.Module):
    fractional_steps = True

    def __init__(self, T: int = 20):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3 + 2, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 3, 3, padding=1)
        self.T = T

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        phase = t.to(x.dtype)[:, None, None, None] / self.T * 3.14159
        time = torch.cat([torch.sin(phase), torch.cos(phase)], 1).expand(-1, -1, *x.shape[2:])
        return self.conv2(torch.tanh(self.conv1(torch.cat([x, time], 1))))
