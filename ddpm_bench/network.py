"""The network wrapper: the one way the bound, the samplers and every later estimator call a model.

`Network(model, execution)` owns everything about calling the network, so the math receives one callable
`net(x, i)` and never an execution setting (as EDM's `*Precond` classes and improved-diffusion's
`_WrappedModel` wrap their backbones once):
- the device (under torchrun a CUDA device is the process's own GPU) and the module moved there;
- the precision (`fp32`, `tf32`, `bf16` autocast; the output is always float32 and every term downstream
  float64);
- the memory format (channels-last, by default on a CPU for a torch module; a plug-in module that cannot
  take it stays contiguous) and `torch.compile` (with a new CUDA-graph step per call in the graph modes);
- the noise convention (`LoadedModel.convention`, ddpm_bench.noise_level): a discrete DDPM is called with
  the 0-based network index i (int64, or float64 at a fractional step), which the format's
  `timestep_input` maps to what the backbone takes (improved-diffusion's rescaling, for example; a backbone
  that cannot take a fractional index is refused by name); a continuous model with gamma, t of its
  schedule or the EDM sigma of its convention. `eps(z, gamma)` gives every estimator the one quantity of
  continuous time, eps_hat at a noise level gamma = -log SNR, whatever the model takes and predicts;
- the plug-in guard: anything a user's `--model` raises (any exception but KeyboardInterrupt, SystemExit
  included) is the plug-in's error, and a non-tensor output is named;
- the shape of the output: (N, C, H, W), or (N, 2C, H, W) for the learned variance types.

Where a model comes from (the table of formats) and what the run lifecycle keeps of it (its fingerprint:
ddpm_bench.fingerprint) are not its business: the math receives a Network and calls it.

Precision changes what the network computes (bf16 in particular), so it is part of a run's settings and
recorded; channels-last, compile, device and batch size only move the float32 rounding and are recorded
in the outputs without being part of their identity.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ddpm_bench import distributed
from ddpm_bench.arguments import given
from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.errors import ModelOutputError, UserError
from ddpm_bench.models.loaded import LoadedModel, check_module_parameters
from ddpm_bench.models.plugin_guard import describe_value, guarded_call
from ddpm_bench.noise_level import (
    DiscreteLevels,
    NoiseConvention,
    alpha_squared,
    eps_from_prediction,
    ve_sigma,
)

PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
CHANNELS_LAST_BY_DEVICE = {"cpu": True}  # a torch module's default memory format per device type


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` is the first CUDA device when there is one, else the CPU; a device that is not here is a
    UserError naming it."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"{given('device', device)}: not a device (cpu, cuda, cuda:N or auto)") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"{given('device', device)}: ddpm-bench runs on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{given('device', device)}: CUDA is not available on this machine; use "
                        f"{given('device', 'cpu')} (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"{given('device', device)}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


@dataclass(frozen=True)
class Execution:
    """How the network runs: none of it is part of a run's identity but the precision."""

    device: str = "auto"  # cpu, cuda, cuda:N or auto
    precision: str = "fp32"  # fp32, tf32 or bf16: the network only; every term stays float64
    channels_last: bool | None = None  # None: the device's default (CHANNELS_LAST_BY_DEVICE)
    compile: str | None = None  # torch.compile mode, None: not compiled

    def __post_init__(self) -> None:
        if not isinstance(self.device, (str, torch.device)):
            raise UserError(f"{given('device', self.device)}: a device name (cpu, cuda, cuda:N or auto)")
        if self.precision not in PRECISIONS:
            raise UserError(f"{given('precision', self.precision)}: choose from {', '.join(PRECISIONS)}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise UserError(f"{given('compile', self.compile)}: choose from {', '.join(COMPILE_MODES)}")
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            raise UserError(f"{given('channels_last', self.channels_last)}: True, False or None (the device's "
                            "default)")


@contextlib.contextmanager
def network_precision(precision: str, device: torch.device):
    """Context for a network call: fp32 (TF32 off), tf32 (TF32 matmul/conv on CUDA), bf16 (autocast)."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        if precision == "bf16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class Network:
    """A loaded model run with an `Execution`: `net(x, i)` takes float (N, C, H, W) model-scale inputs and
    (N,) network indices and returns the float32 output (N, C or 2C, H, W).

    A module the caller gave in memory (`LoadedModel.borrowed`) is left as it was found: each use
    (`in_use`, around every API call, and around a direct call outside one) moves it to the device and
    memory format this Network runs in and puts it in eval mode, and afterwards gives it back its device,
    memory format, modes (every submodule's `training`) and torch's random state; `requires_grad` is never
    touched. Its identity follows its weights: a training loop's module is identified anew when they
    changed since the last use."""

    def __init__(self, model: LoadedModel, execution: Execution = Execution(),
                 image_shape: tuple[int, int, int] | None = None):
        self.model = model
        self.execution = execution
        self.device = self.device_of(execution)
        self.image_shape = tuple(model.image_shape or image_shape or ()) or None
        if model.module is not None and not model.borrowed:
            model.module.to(self.device).eval()
        self.channels_last: bool | None = None  # decided now, or at the first call (a plug-in's probe needs a shape)
        if not self._needs_probe():
            self._set_memory_format(self._default_channels_last())
        elif self.image_shape is not None:
            self._set_memory_format(self._probe_channels_last(self.image_shape))
        self._backbone = model.backbone
        self._using = False
        self._weights_seen = _weights_state(model.module) if model.borrowed and model.module is not None else None
        if execution.compile is not None:
            compiled = torch.compile(model.backbone, mode=None if execution.compile == "default" else execution.compile)
            self._backbone = _new_graph_step_per_call(compiled) if execution.compile in CUDA_GRAPH_MODES else compiled

    def __repr__(self) -> str:
        d, ex, c = self.diffusion, self.execution, self.convention
        cl = ", channels-last" if self.channels_last else ""
        compiled = f", compiled ({ex.compile})" if ex.compile else ""
        if c.continuous:
            lo, hi = c.gamma_range()
            takes = f"{c.noise_input} of {c.schedule}" if c.noise_input == "t" else c.noise_input
            what = f"continuous ({takes}), gamma in [{lo:.4g}, {hi:.4g}], {c.prediction}"
        else:
            what = f"T={d.T} {d.beta_schedule}, {d.mean_type}, {d.var_type}"
        return f"<Network {self.identity.short()} {self.identity.origin}: {what}; {self.device} {ex.precision}{cl}{compiled}>"

    def with_execution(self, execution: Execution) -> Network:
        """The same model run another way (this Network when `execution` is its own)."""
        return self if execution == self.execution else Network(self.model, execution, self.image_shape)

    @contextlib.contextmanager
    def in_use(self):
        """Around one computation with this network (see the class docstring); nothing for a model
        ddpm-bench loaded itself, and nothing more inside another `in_use`."""
        module = self.model.module
        if module is None or not self.model.borrowed or self._using:
            yield self
            return
        check_module_parameters(module, self.identity.origin)  # it may have been changed since (.half())
        if _weights_state(module) != self._weights_seen and self.model.reidentify is not None:
            self.model.identity = self.model.reidentify()
        self._using = True
        modes = [(m, m.training) for m in module.modules()]
        # the caller's own tensors (storage, device, memory format) and gradients, handed back as they were:
        # the call moves and converts them, and only reads them
        tensors = [(t, t.data, t.grad, None if t.grad is None else t.grad.data)
                   for t in (*module.parameters(), *module.buffers())]
        cpu_rng = torch.random.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        try:
            module.to(self.device, memory_format=self.memory_format).eval()
            yield self
        finally:
            for t, data, grad, grad_data in tensors:
                t.data = data
                if t.grad is not grad:
                    t.grad = grad
                if grad is not None:
                    grad.data = grad_data
            for m, training in modes:
                m.training = training
            torch.random.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            self._weights_seen = _weights_state(module)
            self._using = False

    @staticmethod
    def device_of(execution: Execution) -> torch.device:
        """The device an Execution runs on, in this process (cuda:LOCAL_RANK under torchrun)."""
        return distributed.process_device(resolve_device(execution.device))

    # -- what the math reads --------------------------------------------------------------------------------

    @property
    def diffusion(self) -> DiffusionConfig:
        return self.model.diffusion

    @property
    def identity(self):
        return self.model.identity

    @property
    def precision(self) -> str:
        return self.execution.precision

    def describe(self) -> dict:
        """The `model` entry of every output."""
        return self.model.describe()

    def describe_execution(self) -> dict:
        """How the network ran, for the outputs (not part of their identity)."""
        ex = self.execution
        return {"device": str(self.device), "precision": ex.precision, "channels_last": self.channels_last,
                "channels_last_from": "flag" if ex.channels_last is not None else f"default for {self.device.type}",
                "compile": ex.compile, "cuda_graphs": ex.compile in CUDA_GRAPH_MODES and self.device.type == "cuda"}

    def output_channels(self, channels: int) -> int:
        return channels * (2 if self.diffusion.learned_variance and not self.convention.continuous else 1)

    # -- the call ---------------------------------------------------------------------------------------------

    def __call__(self, x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """The backbone's output for inputs x (N, C, H, W) at network indices i (N,), float32; a continuous
        model's `i` is what its convention calls it with (`NoiseConvention.network_input`)."""
        if self.model.borrowed and not self._using:  # called directly, outside an API call
            with self.in_use():
                return self(x, i)
        if i.is_floating_point() and not self.model.fractional_steps and not self.convention.continuous:
            raise UserError(f"model {self.model.identity.origin}: takes only integer network indices, not the "
                            "fractional ones this computation needs")
        if self.channels_last is None:
            self._set_memory_format(self._probe_channels_last(tuple(x.shape[1:])))
        x = x.to(torch.float32).contiguous(memory_format=self.memory_format)
        with network_precision(self.execution.precision, self.device):
            out = self.call_backbone(x, self.model.timestep_input(i) if not self.convention.continuous else i)
        if not isinstance(out, torch.Tensor):
            where = f"--model {self.model.plugin}: f(x, t)" if self.model.plugin else "the model"
            raise ModelOutputError(f"{where} returned {describe_value(out)}; expected a torch.Tensor of shape "
                                   "(N, C, H, W) (or (N, 2C, H, W) for a learned variance)")
        want = (x.shape[0], self.output_channels(x.shape[1]), *x.shape[2:])
        if tuple(out.shape) != want:
            d = self.diffusion
            raise ModelOutputError(f"model returned shape {tuple(out.shape)} for input of shape {tuple(x.shape)}; "
                                   f"expected {want} (mean type {d.mean_type}, variance type {d.var_type})")
        if out.device != x.device:
            raise ModelOutputError(f"model returned its output on {out.device} for an input on {x.device}; "
                                   "return it on the input's device")
        return out.to(torch.float32)

    def call_backbone(self, x: torch.Tensor, t: torch.Tensor, backbone=None):
        backbone = backbone or self._backbone
        if self.model.plugin is None:
            return backbone(x, t)
        return guarded_call(self.model.plugin, backbone, x, t)

    # -- the noise level of continuous time -------------------------------------------------------------------

    @property
    def convention(self) -> NoiseConvention:
        return self.model.convention

    def discrete_levels(self) -> DiscreteLevels:
        """The noise levels of a discrete model's T steps (ValueError for a schedule without finite ones)."""
        return DiscreteLevels.of(self.diffusion.schedule().alphas_cumprod)

    def gamma_range(self) -> tuple[float, float]:
        """[gamma_min, gamma_max] the model covers: its convention's, or a discrete model's first and last
        step (gamma_0, gamma_{T-1})."""
        got = self.convention.gamma_range()
        if got is not None:
            return got
        levels = self.discrete_levels()
        return levels.gamma_min, levels.gamma_max

    def eps(self, z: torch.Tensor, gamma: torch.Tensor, levels: DiscreteLevels | None = None) -> torch.Tensor:
        """eps_hat(z, gamma) (float64, (N, C, H, W)): the model's eps prediction at the variance-preserving
        state z = alpha x + sigma eps and noise level gamma (N,), whatever it takes and predicts (its
        convention): a discrete model at the fractional index of gamma (`levels`, computed when not given),
        with its mean type converted; a continuous one at gamma, t or sigma, its x0 or v converted (a "sigma"
        model is called with y = z / alpha). A mu model predicts one discrete step and has none (refused)."""
        c = self.convention
        gamma = gamma.to(torch.float64)
        abar = alpha_squared(gamma)
        if not c.continuous:
            return self.predict_eps(z, (levels or self.discrete_levels()).index_of_gamma(gamma), abar)
        if c.noise_input == "sigma":  # EDM / k-diffusion: f(y, sigma) in the variance-exploding scale
            shape = (-1, *([1] * (z.ndim - 1)))
            y = z.to(torch.float64) / abar.sqrt().reshape(shape)
            sigma = ve_sigma(gamma)
            out = self(y, sigma).to(torch.float64)
            if c.prediction == "x0":  # EDM's denoiser D(y, sigma): eps = (y - D) / sigma
                return (y - out) / sigma.reshape(shape)
            return eps_from_prediction(c.prediction, out, z, abar)
        return eps_from_prediction(c.prediction, self(z, c.network_input(gamma)), z, abar)

    def predict_eps(self, x: torch.Tensor, i: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """The eps the mean part of a discrete model's output implies at x_t = x (float64), for alpha-bar `abar`
        (N,) at the (possibly fractional) network index i; a mu model predicts the mean of one discrete step
        and has no eps at a fractional step (refused)."""
        kind = self.diffusion.mean_type
        if kind == "mu":
            raise UserError(f"model {self.model.identity.origin}: mean type {kind!r} predicts the mean of one "
                            "discrete step; it has no eps at a continuous noise level")
        return eps_from_prediction(kind, self(x, i)[:, : x.shape[1]], x, abar)

    # -- execution choices ------------------------------------------------------------------------------------

    def _needs_probe(self) -> bool:
        """A plug-in module at the device's default format: one call on a zero image decides."""
        return (self.execution.channels_last is None and self.model.plugin is not None and self.model.module is not None
                and CHANNELS_LAST_BY_DEVICE.get(self.device.type, False))

    def _default_channels_last(self) -> bool:
        """The flag, or the device's default for a torch module (a plain callable gets its input as given;
        the caller's module in memory runs channels-last only for the time of each use)."""
        if self.execution.channels_last is not None:
            return self.execution.channels_last
        return self.model.module is not None and CHANNELS_LAST_BY_DEVICE.get(self.device.type, False)

    def _probe_channels_last(self, image_shape: tuple[int, ...]) -> bool:
        """Whether a plug-in module takes one channels-last zero image of `image_shape`."""
        module = self.model.module
        x = torch.zeros(1, *image_shape, device=self.device).contiguous(memory_format=torch.channels_last)
        try:
            module.to(memory_format=torch.channels_last)  # outside no_grad: its parameters stay trainable tensors
            with torch.no_grad():
                noise = self.convention.network_input(torch.zeros(1, dtype=torch.float64, device=self.device)) \
                    if self.convention.continuous else \
                    self.model.timestep_input(torch.zeros(1, dtype=torch.long, device=self.device))
                module(x, noise)
            return True
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 - any failure: it does not take this format; run it as written
            module.to(memory_format=torch.contiguous_format)
            return False

    def _set_memory_format(self, channels_last: bool) -> None:
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if self.model.module is not None and not self.model.borrowed:
            self.model.module.to(memory_format=self.memory_format)


def _weights_state(module: torch.nn.Module) -> tuple:
    """What changes when a module's weights do: each tensor's storage and in-place version counter."""
    return tuple((t.data_ptr(), t._version) for t in module.state_dict(keep_vars=True).values())


def _new_graph_step_per_call(net):
    """A compiled network in a CUDA-graph mode: every call starts a new graph step (its callers use an
    output before the next call and keep none)."""

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return net(x, t)

    return call
