"""An improved-diffusion / guided-diffusion checkpoint (`--ckpt FILE.pt --flags "MODEL_FLAGS DIFFUSION_FLAGS"`):
a plain state dict saved by openai/improved-diffusion's `image_train.py`, described by the flags of its
README (Nichol & Dhariwal 2021). The flags build the network (`models/iddpm_unet.py`, the state dict loaded
strictly; the first mismatching key and shape named otherwise) and the diffusion (`models/iddpm_flags.py`);
the network is called with improved-diffusion's timestep (t * 1000 / T with `rescale_timesteps`, its
default), which the network wrapper applies at integer and fractional steps alike. Identity: the weights'
sha256 with every flag that changes the function (the resolved values of `model_and_diffusion_defaults()`)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from ddpm_bench.arguments import given, named
from ddpm_bench.errors import CheckpointError, UserError
from ddpm_bench.identity import model_identity, state_dict_sha256
from ddpm_bench.messages import warn
from ddpm_bench.models.formats.common import check_flags_match
from ddpm_bench.models.iddpm_flags import IGNORED_FLAGS, iddpm_model, parse_flags, timestep_input
from ddpm_bench.models.loaded import LoadedModel
from ddpm_bench.models.spec import ModelSpec
from ddpm_bench.provenance import sha256_file

NAME = "improved-diffusion"
TAKES_FLAGS = True  # the only format that needs its flags (ModelSpec.flags)


def detect(spec: ModelSpec) -> bool:
    return spec.ckpt is not None and spec.flags is not None


def load(spec: ModelSpec) -> LoadedModel:
    path = Path(spec.ckpt)
    flags = parse_flags(spec.flags)
    if flags.model["num_classes"] is not None:
        raise UserError(f"{named('flags')} with --class_cond True: class-conditional models are not evaluated yet (their "
                        "likelihood needs a class per image); give an unconditional model")
    if not path.is_file():
        raise CheckpointError(f"{given('source', path)}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupt, or a pickle of something else
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{given('source', path)}: not a readable state dict (truncated or corrupt?): {first}") from None
    if isinstance(state, dict) and "format" in state and "config" in state:
        raise CheckpointError(f"{given('source', path)}: a ddpm-bench checkpoint, which stores its own settings: "
                              f"leave out {named('flags')}")
    try:
        unet = iddpm_model(flags, state)
    except CheckpointError as e:
        raise CheckpointError(f"{given('source', path)} with these {named('flags')}: {e}") from None
    if flags.use_fp16:
        warn(f"{named('flags')} --use_fp16 True: improved-diffusion runs this network in float16; ddpm-bench "
             "evaluates it with its float32 weights, in the precision asked for (fp32 by default; "
             f"{given('precision', 'bf16')} for a 16-bit one)")
    diffusion = flags.diffusion_config()
    check_flags_match(diffusion, spec.diffusion_flags, f"{named('flags')} {spec.flags!r}")
    function_flags = {k: v for k, v in flags.values.items() if k not in IGNORED_FLAGS}
    architecture = {"improved_diffusion_flags": function_flags}
    ident = model_identity(NAME, None, state_dict_sha256(unet.state_dict()), diffusion, architecture, str(path))
    prov = {"kind": NAME, "path": str(path.resolve()), "sha256": sha256_file(path), "flags": spec.flags,
            "ignored_flags": list(flags.ignored)}
    return LoadedModel(backbone=unet, diffusion=diffusion, identity=ident, provenance=prov,
                       image_shape=(3, flags.image_size, flags.image_size), module=unet,
                       config={"improved_diffusion_flags": function_flags},
                       timestep_input=partial(timestep_input, T=flags.T, rescale=flags.rescale_timesteps))

