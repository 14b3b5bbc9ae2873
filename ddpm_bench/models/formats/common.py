"""What the model formats share: diffusion settings from flags, and the check that a flag given with a
stored model does not contradict what it was trained with."""

from __future__ import annotations

from ddpm_bench.diffusion import DiffusionConfig, DiffusionSettingError
from ddpm_bench.errors import UserError
from ddpm_bench.models.spec import DIFFUSION_FLAGS


def diffusion_from_flags(flags: dict) -> DiffusionConfig:
    """DiffusionConfig from the flags that were given (None = not given -> the paper's default); an
    impossible value is a UserError naming the flag."""
    try:
        return DiffusionConfig(**{k: v for k, v in flags.items() if v is not None})
    except DiffusionSettingError as e:
        raise UserError(e.render(DIFFUSION_FLAGS)) from None


def check_flags_match(stored: DiffusionConfig, flags: dict, origin: str) -> None:
    """A flag given explicitly that contradicts the stored settings is an error (exit 2)."""
    for name, value in flags.items():
        if value is None:
            continue
        have = getattr(stored, name)
        if (float(value) != float(have)) if isinstance(have, float) else (value != have):
            raise UserError(f"{DIFFUSION_FLAGS[name]} {value} contradicts {origin}, which was trained with {have}")
