"""ddpm-bench checkpoints: one torch file, loadable with `weights_only=True`.

Keys: `format` ("ddpm-bench/1"), `config` (JSON-able: `model`, `diffusion`, `training`), `model` and
`ema` state dicts, `optimizer`, `step`, and the state needed to resume training exactly.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

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
        raise CheckpointError(f"--ckpt {path}: no such file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"--ckpt {path}: not a readable checkpoint (truncated or corrupt?): {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"--ckpt {path}: not a ddpm-bench checkpoint (format {found!r}, expected {FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"--ckpt {path}: checkpoint lacks {', '.join(missing)}")
    if not isinstance(ckpt["config"], dict) or "model" not in ckpt["config"] or "diffusion" not in ckpt["config"]:
        raise CheckpointError(f"--ckpt {path}: checkpoint config lacks 'model' or 'diffusion'")
    return ckpt
