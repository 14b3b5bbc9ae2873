"""How the network is run fast: channels-last memory format and `torch.compile`.

Channels-last is on by default for a torch module on a CPU, where oneDNN's convolutions prefer it
(measured 1.1-3x on the tiny U-Net and a small conv net, benchmarks/RESULTS.md), and off on a GPU
(not measured there yet); `--channels-last` / `--no-channels-last` choose. A plug-in module that cannot
take a channels-last input (a `.view` on it, say) stays contiguous: one call on a single zero image decides.

Neither changes what the network computes, only the float32 rounding (convolution algorithms, fused
kernels), like another device or batch size would; so neither is part of a run's settings, and both are
written into its outputs. `--compile reduce-overhead` (and `max-autotune`) is torch.compile with CUDA
graphs (cudagraph trees) on a GPU: one graph is recorded per batch shape and replayed at every later
call, which removes the per-kernel launch cost of a small network at 32x32; on a CPU there are no graphs.
Every call then starts a new graph step (`torch.compiler.cudagraph_mark_step_begin`): the callers use a
network output before the next call and keep none of them.
"""

from __future__ import annotations

import torch

from ddpm_bench.errors import UserError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


# channels-last by default, per device type, for a torch module (a plain callable gets its input as given)
CHANNELS_LAST_BY_DEVICE = {"cpu": True}


def default_channels_last(source, device: torch.device) -> bool:
    return source.module is not None and CHANNELS_LAST_BY_DEVICE.get(device.type, False)


def choose_channels_last(source, channels_last: bool | None, device: torch.device,
                         image_shape: tuple[int, int, int] | None = None) -> bool:
    """`channels_last` as asked, or (None) the device's default; a plug-in module that fails on one
    channels-last zero image of `image_shape` keeps the contiguous format."""
    if channels_last is not None:
        return channels_last
    if not default_channels_last(source, device):
        return False
    if source.provenance.get("kind") != "plugin" or image_shape is None:
        return True
    module = source.module
    x = torch.zeros(1, *image_shape, device=device).contiguous(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            module.to(memory_format=torch.channels_last)(x, torch.zeros(1, dtype=torch.long, device=device))
        return True
    except Exception:  # noqa: BLE001 - any failure: the module does not take this format; run it as written
        module.to(memory_format=torch.contiguous_format)
        return False


def speed_up(source, channels_last: bool = False, compile_mode: str | None = None) -> torch.memory_format:
    """Put `source.module` in channels-last format and/or replace `source.net` by its compiled version;
    returns the memory format the network input must have."""
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise UserError(f"--compile {compile_mode}: choose from {', '.join(COMPILE_MODES)}")
    if channels_last and source.module is not None:  # a plain callable only gets its input in that format
        source.module.to(memory_format=torch.channels_last)
    if compile_mode is not None:
        compiled = torch.compile(source.net, mode=None if compile_mode == "default" else compile_mode)
        source.net = _new_graph_step_per_call(compiled) if compile_mode in CUDA_GRAPH_MODES else compiled
    return torch.channels_last if channels_last else torch.contiguous_format


def with_memory_format(net, memory_format: torch.memory_format):
    """`net` called with its input laid out in `memory_format` (for callers that do not lay it out)."""
    if memory_format == torch.contiguous_format:
        return net
    return lambda x, i: net(x.contiguous(memory_format=memory_format), i)


def _new_graph_step_per_call(net):
    def call(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return net(x, i)

    return call


def describe(channels_last: bool, compile_mode: str | None, device: torch.device, asked: bool | None = None) -> dict:
    """What goes into the outputs: how the network ran (`asked`: the flag, None = the device default)."""
    return {"channels_last": channels_last, "channels_last_from": "flag" if asked is not None else
            f"default for {device.type}", "compile": compile_mode,
            "cuda_graphs": compile_mode in CUDA_GRAPH_MODES and device.type == "cuda"}
