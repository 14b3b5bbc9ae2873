"""improved-diffusion's command-line flags -> the network, the diffusion and how the network is called.

openai/improved-diffusion (Nichol & Dhariwal 2021) describes a model by the flags of its scripts, e.g. its
README's CIFAR-10 model `--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True
--dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine`; a flag not given takes the default of its
`model_and_diffusion_defaults()`. `parse_flags` reads such a string into `IddpmFlags`:

- `model`: the arguments of `IddpmUNet` as its `create_model` sets them (channel_mult from image_size,
  attention_resolutions as downsample rates image_size // resolution, 6 output channels with learn_sigma, 1000
  classes with class_cond);
- `diffusion`: the arguments of this project's `DiffusionConfig`: T = diffusion_steps; the linear schedule
  scaled to T (betas from 0.1 / T to 20 / T, DDPM's 1e-4 to 0.02 at T = 1000) or the cosine schedule (its
  Eq. 17); mean type x0 with predict_xstart, else eps; variance learned-range with learn_sigma, else
  fixed-small with sigma_small, else fixed-large;
- `rescale_timesteps`: the network is given t * 1000 / T instead of the index t (`timestep_input`).

Flags that change only training or sampling (lr, batch_size, use_kl, rescale_learned_sigmas, use_fp16,
use_ddim, clip_denoised, ...) are accepted and listed in `ignored`: ddpm-bench's own options decide how it
evaluates. `timestep_respacing` other than "" describes a shorter process than the model's and is refused.
Unknown flags, malformed values and flags without a value are one-line `UserError`s naming the flag.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ddpm_bench.diffusion import DiffusionConfig, DiffusionSettingError
from ddpm_bench.errors import CheckpointError, UserError
from ddpm_bench.models.iddpm_unet import IddpmUNet

# improved-diffusion's `create_model`: the channel multipliers it picks for each image size it supports
CHANNEL_MULT = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
NUM_CLASSES = 1000  # class_cond: ImageNet's classes
IN_CHANNELS = 3
TRUE_WORDS = ("yes", "true", "t", "y", "1")  # improved-diffusion's str2bool, case-insensitive
FALSE_WORDS = ("no", "false", "f", "n", "0")


def _bool(text: str) -> bool:
    if text.lower() in TRUE_WORDS:
        return True
    if text.lower() in FALSE_WORDS:
        return False
    raise ValueError("expected a boolean (true/false, yes/no, t/f, y/n, 1/0)")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("expected an integer") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("expected a number") from None


# flag -> (parser, default); `model_and_diffusion_defaults()` first, then the flags of its scripts
MODEL_AND_DIFFUSION_FLAGS: dict[str, tuple[Callable[[str], object], object]] = {
    "image_size": (_int, 64),
    "num_channels": (_int, 128),
    "num_res_blocks": (_int, 2),
    "num_heads": (_int, 4),
    "num_heads_upsample": (_int, -1),
    "attention_resolutions": (str, "16,8"),
    "dropout": (_float, 0.0),
    "learn_sigma": (_bool, False),
    "sigma_small": (_bool, False),
    "class_cond": (_bool, False),
    "diffusion_steps": (_int, 1000),
    "noise_schedule": (str, "linear"),
    "timestep_respacing": (str, ""),
    "use_kl": (_bool, False),
    "predict_xstart": (_bool, False),
    "rescale_timesteps": (_bool, True),
    "rescale_learned_sigmas": (_bool, True),
    "use_checkpoint": (_bool, False),
    "use_scale_shift_norm": (_bool, True),
}
# image_train.py, image_sample.py and image_nll.py: training and sampling, not the model nor its process
SCRIPT_FLAGS: dict[str, tuple[Callable[[str], object], object]] = {
    "data_dir": (str, ""),
    "schedule_sampler": (str, "uniform"),
    "lr": (_float, 1e-4),
    "weight_decay": (_float, 0.0),
    "lr_anneal_steps": (_int, 0),
    "batch_size": (_int, 1),
    "microbatch": (_int, -1),
    "ema_rate": (str, "0.9999"),
    "log_interval": (_int, 10),
    "save_interval": (_int, 10000),
    "resume_checkpoint": (str, ""),
    "use_fp16": (_bool, False),
    "fp16_scale_growth": (_float, 1e-3),
    "clip_denoised": (_bool, True),
    "num_samples": (_int, 10000),
    "use_ddim": (_bool, False),
    "model_path": (str, ""),
}
FLAGS = {**MODEL_AND_DIFFUSION_FLAGS, **SCRIPT_FLAGS}
# flags that change the training loss, memory use or sampling, not the function evaluated
IGNORED_FLAGS = frozenset({"use_kl", "rescale_learned_sigmas", "use_checkpoint", *SCRIPT_FLAGS})


@dataclass(frozen=True)
class IddpmFlags:
    """An improved-diffusion model's flags, resolved: the network, the diffusion and the timestep mapping."""

    model: dict[str, object]  # keyword arguments of IddpmUNet
    diffusion: dict[str, object]  # keyword arguments of DiffusionConfig
    rescale_timesteps: bool  # the network is given t * 1000 / T, not the index t
    image_size: int
    values: dict[str, object]  # every flag of model_and_diffusion_defaults(), given or default
    ignored: tuple[str, ...]  # flags given that do not change what is evaluated
    use_fp16: bool = False  # improved-diffusion ran the network in float16 (ddpm-bench says what it does instead)

    @property
    def T(self) -> int:
        return int(self.diffusion["T"])

    def diffusion_config(self) -> DiffusionConfig:
        return DiffusionConfig(**self.diffusion)


def timestep_input(i: torch.Tensor, T: int, rescale: bool) -> torch.Tensor:
    """(N,) step indices 0..T-1, integer or fractional -> the (N,) timesteps improved-diffusion gives its
    network: i * (1000 / T) with `rescale` (its `rescale_timesteps`), else i; float32 for integer or float32
    indices, float64 for float64 ones. Integer indices follow its `_WrappedModel` to the bit (float32 i times
    1000 / T)."""
    t = i if i.dtype in (torch.float32, torch.float64) else i.to(torch.float32)
    return t * (1000.0 / T) if rescale else t


def _tokens(flags: str | Sequence[str]) -> list[str]:
    if not isinstance(flags, str):
        return [str(tok) for tok in flags]
    try:
        return shlex.split(flags)
    except ValueError as e:  # unbalanced quotes
        raise UserError(f"improved-diffusion flags {flags!r}: {e}") from None


def _read(tokens: list[str]) -> dict[str, object]:
    """--name value and --name=value pairs -> {name: parsed value}; a repeated flag must repeat its value."""
    given: dict[str, object] = {}
    k, last = 0, None
    while k < len(tokens):
        tok = tokens[k]
        if not tok.startswith("--") or tok == "--":
            after = f" (after {last})" if last else ""
            raise UserError(f"{tok!r}: a value without a flag{after}; improved-diffusion's flags are "
                            "--name value")
        name, eq, text = tok[2:].partition("=")
        if name not in FLAGS:
            near = difflib.get_close_matches(name, FLAGS, n=1)
            hint = f"; did you mean --{near[0]}?" if near else ""
            raise UserError(f"--{name}: not a flag of improved-diffusion's scripts{hint}")
        if eq:
            k += 1
        elif k + 1 < len(tokens) and not tokens[k + 1].startswith("--"):
            text, k = tokens[k + 1], k + 2
        else:
            raise UserError(f"--{name}: no value given (improved-diffusion's flags take one each: "
                            f"--{name} VALUE)")
        parse, _ = FLAGS[name]
        try:
            value = parse(text)
        except ValueError as e:
            raise UserError(f"--{name} {text!r}: {e}") from None
        if name in given and given[name] != value:
            raise UserError(f"--{name} is given twice, as {given[name]!r} and {value!r}")
        given[name] = value
        last = f"--{name} {text}" if not eq else tok
    return given


def _attention_rates(text: str, image_size: int) -> tuple[int, ...]:
    """'16,8' (resolutions) -> (image_size // 16, image_size // 8) (downsample rates), as `create_model`
    does."""
    rates = []
    for part in text.split(","):
        try:
            res = int(part)
        except ValueError:
            res = 0
        if res < 1:
            raise UserError(f"--attention_resolutions {text!r}: expected comma-separated image sizes such "
                            "as 16,8")
        rates.append(image_size // res)
    return tuple(rates)


def _check_model(v: dict[str, object], rates: tuple[int, ...]) -> None:
    """Refuse settings improved-diffusion's `UNetModel` cannot be built or run with, naming the flag."""
    channels, heads, heads_up = v["num_channels"], v["num_heads"], v["num_heads_upsample"]
    if channels < 1 or channels % 32:
        raise UserError(f"--num_channels {channels}: must be a positive multiple of 32 (GroupNorm with 32 "
                        "groups)")
    if v["num_res_blocks"] < 0:
        raise UserError(f"--num_res_blocks {v['num_res_blocks']}: must be at least 0")
    if not 0.0 <= v["dropout"] <= 1.0:
        raise UserError(f"--dropout {v['dropout']}: must lie in [0, 1]")
    if heads < 1:
        raise UserError(f"--num_heads {heads}: must be at least 1")
    if heads_up != -1 and heads_up < 1:
        raise UserError(f"--num_heads_upsample {heads_up}: must be at least 1, or -1 for --num_heads")
    mult = CHANNEL_MULT[v["image_size"]]
    down = {channels * m for level, m in enumerate(mult) if 2**level in rates} | {channels * mult[-1]}
    up = {channels * m for level, m in enumerate(mult) if 2**level in rates}
    for flag, n, widths in (("num_heads", heads, down), ("num_heads_upsample", heads_up, up)):
        bad = sorted(c for c in widths if n > 0 and c % n)
        if bad:
            raise UserError(f"--{flag} {n}: attention with {bad[0]} channels cannot be split into {n} heads")


def _diffusion(v: dict[str, object]) -> dict[str, object]:
    """The flags' diffusion as `DiffusionConfig` arguments (its `create_gaussian_diffusion`)."""
    if v["timestep_respacing"] != "":
        raise UserError(f"--timestep_respacing {v['timestep_respacing']}: a respaced process is not the "
                        f"model's {v['diffusion_steps']}-step process; drop the flag (ddpm-bench sample "
                        "--steps K respaces sampling)")
    T = v["diffusion_steps"]
    if T < 1:
        raise UserError(f"--diffusion_steps {T}: must be at least 1")
    out: dict[str, object] = {"T": T}
    if v["noise_schedule"] == "linear":
        scale = 1000 / T
        if scale * 0.02 >= 1.0:
            raise UserError(f"--diffusion_steps {T}: the linear schedule's last beta, 20 / T, must be "
                            "below 1")
        out.update(beta_schedule="linear", beta_start=scale * 0.0001, beta_end=scale * 0.02)
    elif v["noise_schedule"] == "cosine":
        out.update(beta_schedule="cosine")
    else:
        raise UserError(f"--noise_schedule {v['noise_schedule']!r}: improved-diffusion has linear and cosine")
    out["mean_type"] = "x0" if v["predict_xstart"] else "eps"
    if v["learn_sigma"]:
        out["var_type"] = "learned-range"
    else:
        out["var_type"] = "fixed-small" if v["sigma_small"] else "fixed-large"
    try:
        DiffusionConfig(**out)
    except DiffusionSettingError as e:
        raise UserError(e.render({"T": "--diffusion_steps"})) from None
    return out


def parse_flags(flags: str | Sequence[str]) -> IddpmFlags:
    """improved-diffusion flags, a string as its README writes them or a list of tokens -> `IddpmFlags`."""
    given = _read(_tokens(flags))
    v = {name: given.get(name, default) for name, (_, default) in MODEL_AND_DIFFUSION_FLAGS.items()}
    if v["image_size"] not in CHANNEL_MULT:
        raise UserError(f"--image_size {v['image_size']}: improved-diffusion builds "
                        f"{', '.join(map(str, sorted(CHANNEL_MULT)))}")
    rates = _attention_rates(v["attention_resolutions"], v["image_size"])
    _check_model(v, rates)
    model = dict(
        in_channels=IN_CHANNELS,
        model_channels=v["num_channels"],
        out_channels=2 * IN_CHANNELS if v["learn_sigma"] else IN_CHANNELS,
        num_res_blocks=v["num_res_blocks"],
        attention_resolutions=rates,
        dropout=v["dropout"],
        channel_mult=CHANNEL_MULT[v["image_size"]],
        conv_resample=True,
        num_classes=NUM_CLASSES if v["class_cond"] else None,
        num_heads=v["num_heads"],
        num_heads_upsample=v["num_heads_upsample"],
        use_scale_shift_norm=v["use_scale_shift_norm"],
    )
    return IddpmFlags(model=model, diffusion=_diffusion(v), rescale_timesteps=v["rescale_timesteps"],
                      image_size=v["image_size"], values=v,
                      ignored=tuple(name for name in given if name in IGNORED_FLAGS),
                      use_fp16=bool(given.get("use_fp16", False)))


# (what a key or its shapes tell, the flag to look at) for `check_state_dict`'s message
_HINTS: tuple[tuple[Callable[[str, tuple, tuple], bool], str], ...] = (
    (lambda k, a, b: k.startswith("out.2."), "--learn_sigma (True: 6 output channels, False: 3)"),
    (lambda k, a, b: k.startswith("label_emb."), "--class_cond"),
    (lambda k, a, b: k.startswith("time_embed.0."), "--num_channels"),
    (lambda k, a, b: ".emb_layers." in k and bool(a) and bool(b) and (a[0] == 2 * b[0] or b[0] == 2 * a[0]),
     "--use_scale_shift_norm (True doubles the timestep projection)"),
    (lambda k, a, b: any(f".{p}." in k for p in ("qkv", "proj_out", "norm")),
     "--attention_resolutions or --image_size"),
)


def _hint(key: str, got: tuple = (), want: tuple = ()) -> str:
    for matches, flag in _HINTS:
        if matches(key, got, want):
            return f"; check {flag}"
    return ""


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise `CheckpointError` unless `state` has exactly the keys and shapes of `module`'s state dict.

    The message names the first key, in the checkpoint's order, that the module lacks or has with another
    shape (with both shapes), else the first key of the module that the checkpoint lacks; and a flag to check
    where the key points to one. improved-diffusion saves its keys in the module's order, so this is the first
    difference in the file.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"the checkpoint is a {type(state).__name__}, not a state dict of tensors")
    expected = module.state_dict()
    for key, got in state.items():
        if not isinstance(got, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {key} is a {type(got).__name__}, not a tensor")
        if key not in expected:
            raise CheckpointError(f"the checkpoint has {key} {tuple(got.shape)}, which the flags' network "
                                  f"lacks{_hint(key)}")
        if got.shape != expected[key].shape:
            shapes = (tuple(got.shape), tuple(expected[key].shape))
            raise CheckpointError(f"{key} has shape {shapes[0]} in the checkpoint and {shapes[1]} in the "
                                  f"flags' network{_hint(key, *shapes)}")
    for key, want in expected.items():
        if key not in state:
            raise CheckpointError(f"the checkpoint lacks {key} {tuple(want.shape)}, which the flags' network "
                                  f"has{_hint(key)}")


def iddpm_model(flags: IddpmFlags, state: Mapping[str, torch.Tensor]) -> IddpmUNet:
    """The network of `flags` with the weights of `state` (checked by `check_state_dict`), in eval mode;
    called with improved-diffusion's timesteps (`timestep_input` of the step indices)."""
    unet = IddpmUNet(**flags.model)
    check_state_dict(unet, state)
    unet.load_state_dict(state, strict=True)
    return unet.eval()
