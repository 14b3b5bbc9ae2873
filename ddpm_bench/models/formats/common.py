"""What the model formats share: diffusion settings from flags, and the check that a flag given with a
stored model does not contradict what it was trained with."""

from __future__ import annotations

from dataclasses import fields

from ddpm_bench.arguments import command_line
from ddpm_bench.diffusion import DiffusionConfig, DiffusionSettingError
from ddpm_bench.errors import UserError
from ddpm_bench.models.spec import DIFFUSION_FLAGS
from ddpm_bench.noise_level import NoiseConvention, convention_of


def diffusion_from_flags(flags: dict) -> DiffusionConfig:
    """DiffusionConfig from the flags that were given (None = not given -> the paper's default); an
    impossible value is a UserError naming the flag."""
    try:
        return DiffusionConfig(**{k: v for k, v in flags.items() if v is not None})
    except DiffusionSettingError as e:
        names = DIFFUSION_FLAGS if command_line() else {f.name: f"diffusion['{f.name}']" for f in fields(DiffusionConfig)}
        raise UserError(e.render(names)) from None


def check_flags_match(stored: DiffusionConfig, flags: dict, origin: str) -> None:
    """A flag given explicitly that contradicts the stored settings is an error (exit 2)."""
    for name, value in flags.items():
        if value is None:
            continue
        have = getattr(stored, name)
        if (float(value) != float(have)) if isinstance(have, float) else (value != have):
            raise UserError(f"{DIFFUSION_FLAGS[name]} {value} contradicts {origin}, which was trained with {have}")


def declared_convention(obj: object, diffusion: DiffusionConfig, origin: str) -> NoiseConvention:
    """The noise convention an object in memory or a plug-in declares with its attributes (SPEC section 8;
    none: a discrete DDPM's), checked; a UserError naming `origin` and the attribute otherwise."""
    try:
        convention = convention_of(obj)
    except (ValueError, TypeError) as e:
        raise UserError(f"{origin}: {e}") from None
    if not convention.continuous and getattr(obj, "prediction", None) not in (None, diffusion.mean_type):
        raise UserError(f"{origin}: prediction {convention.prediction!r} with noise_input 'index': a discrete model "
                        f"predicts its mean type ({diffusion.mean_type!r}); give it as the mean type")
    return convention


def with_convention(architecture: dict, convention: NoiseConvention) -> dict:
    """A model's architecture for its identity: a continuous convention is part of it (the default, a
    discrete DDPM's, is not written: today's identities stay as they are)."""
    return {**architecture, "noise": convention.to_dict()} if convention.continuous else architecture
