"""ddpm-bench checkpoints: one torch file, loadable with `weights_only=True`.

Keys: `format` ("ddpm-bench/1"), `config` (JSON-able: `model`, `diffusion`, `training`), `model` and
`ema` state dicts, `optimizer`, `step`, and the state needed to resume training exactly.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ddpm_bench.arguments import given, say
from ddpm_bench.errors import CheckpointError
from ddpm_bench.shards import atomic_write_bytes

FORMAT = "ddpm-bench/1"
REQUIRED_KEYS = ("format", "config", "model", "ema", "step")


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write a checkpoint atomically (temporary file + rename)."""
    payload = {"format": FORMAT, **payload}
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a checkpoint; a missing, truncated or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{given('source', path)}: no such file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{given('source', path)}: not a readable checkpoint (truncated or corrupt?): {first}") \
            from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{given('source', path)}: {foreign_checkpoint(ckpt)}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"--ckpt {path}: checkpoint lacks {', '.join(missing)}")
    if not isinstance(ckpt["config"], dict) or "model" not in ckpt["config"] or "diffusion" not in ckpt["config"]:
        raise CheckpointError(f"--ckpt {path}: checkpoint config lacks 'model' or 'diffusion'")
    return ckpt


IDDPM_KEYS = ("input_blocks.", "time_embed.")  # what every improved-diffusion UNetModel's state_dict holds
IDDPM_EXAMPLE = ("--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True "
                 "--diffusion_steps 4000 --noise_schedule cosine")


def foreign_checkpoint(ckpt: object) -> str:
    """What a loaded file that is no ddpm-bench checkpoint looks like, and what to do with it."""
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        keys = list(ckpt)
        if all(any(k.startswith(p) for k in keys) for p in IDDPM_KEYS):
            return ("looks like an improved-diffusion state_dict (input_blocks.*, time_embed.*), which holds no "
                    "architecture or schedule: give them with its flags, as its README writes them, e.g. "
                    + say(f'--flags "{IDDPM_EXAMPLE}"', f"load_model(path, flags='{IDDPM_EXAMPLE}')"))
        return (f"a bare state_dict ({len(keys)} tensors, e.g. {keys[0]!r}) holds no architecture or schedule: build "
                "the module and load it yourself, then " + say("use it from a --model plug-in",
                                                                "pass it: load_model(module, diffusion={...})"))
    found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
    return f"not a ddpm-bench checkpoint (format {found!r}, expected {FORMAT!r})"
