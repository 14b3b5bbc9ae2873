"""Argument checks of the command line that argparse does not do itself (SPEC section 2: bad usage is
exit status 2 with one line on stderr naming the flag and value)."""

from __future__ import annotations

import argparse

from ddpm_bench.bound import MAX_SEED as SEED_MAX  # seeds key the counter noise as int64 (ddpm_bench.noise)
from ddpm_bench.diffusion import DiffusionConfig, DiffusionSettingError
from ddpm_bench.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (`ddpm-bench CMD: error: MESSAGE`), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def seed(text: str) -> int:
    """argparse type of --seed: an integer in 0..2**63-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in 0..2**63-1, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must lie in 0..2**63-1 ({SEED_MAX}), got {text}")
    return value


def check_diffusion_flags(flags: dict) -> dict:
    """The diffusion flags of a --model, checked by DiffusionConfig (unset flags take the paper's defaults);
    an impossible value is a UserError naming the flag. Returns `flags`."""
    try:
        DiffusionConfig(**{k: v for k, v in flags.items() if v is not None})
    except DiffusionSettingError as e:
        from ddpm_bench.models.source import DIFFUSION_FLAGS

        raise UserError(e.render(DIFFUSION_FLAGS)) from None
    return flags
