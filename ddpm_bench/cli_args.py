"""Argument checks of the command line that argparse does not do itself (SPEC section 2: bad usage is
exit status 2 with one line on stderr naming the flag and value)."""

from __future__ import annotations

from ddpm_bench.diffusion import DiffusionConfig, DiffusionSettingError
from ddpm_bench.errors import UserError

# DiffusionConfig field -> its flag (as ddpm_bench.models.source.DIFFUSION_FLAGS)
DIFFUSION_FLAG_NAMES = {"T": "--T", "beta_schedule": "--beta-schedule", "beta_start": "--beta-start",
                        "beta_end": "--beta-end", "mean_type": "--mean-type", "var_type": "--var-type"}


def check_diffusion_flags(flags: dict) -> dict:
    """The diffusion flags of a --model, checked by DiffusionConfig (unset flags take the paper's defaults);
    an impossible value is a UserError naming the flag. Returns `flags`."""
    try:
        DiffusionConfig(**{k: v for k, v in flags.items() if v is not None})
    except DiffusionSettingError as e:
        raise UserError(e.render(DIFFUSION_FLAG_NAMES)) from None
    return flags
