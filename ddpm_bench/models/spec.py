"""Where a model comes from, as the command line, a recipe or a Python call names it (a leaf: the formats
in `ddpm_bench.models.formats` read it, and every command's options hold one)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ddpm_bench.arguments import named, say
from ddpm_bench.errors import UserError

# flag name on the command line -> DiffusionConfig field
DIFFUSION_FLAGS = {
    "T": "--T",
    "beta_schedule": "--beta-schedule",
    "beta_start": "--beta-start",
    "beta_end": "--beta-end",
    "mean_type": "--mean-type",
    "var_type": "--var-type",
}
WEIGHTS = ("ema", "raw")


@dataclass(frozen=True)
class ModelSpec:
    """Exactly one of `ckpt` (anything `--ckpt` accepts) and `model` (`--model MODULE:CALLABLE`), which
    weights of a ddpm-bench checkpoint, the diffusion flags that were given (None = not given), and, for an
    improved-diffusion checkpoint, its MODEL_FLAGS / DIFFUSION_FLAGS string (`--flags`)."""

    ckpt: str | None = None
    model: str | None = None
    weights: str = "ema"
    diffusion_flags: dict = field(default_factory=dict)
    flags: str | None = None

    def __post_init__(self) -> None:
        if (self.ckpt is None) == (self.model is None):
            raise UserError(say("give exactly one of --ckpt PATH and --model MODULE:CALLABLE",
                                "give exactly one model: a path (or 'embedded', 'hf:ORG/NAME') or plugin='FILE.py:make'"))
        if self.weights not in WEIGHTS:
            raise UserError(f"{named('weights')} must be 'ema' or 'raw', got {self.weights!r}")
        if self.flags is not None and self.ckpt is None:
            raise UserError(f"{named('flags')} describes an improved-diffusion checkpoint given with " +
                            say("--ckpt FILE.pt", "its file, load_model('FILE.pt', flags=...)"))
        unknown = set(self.diffusion_flags) - set(DIFFUSION_FLAGS)
        if unknown:
            raise UserError(f"unknown diffusion setting(s) {', '.join(sorted(unknown))}; known: "
                            f"{', '.join(DIFFUSION_FLAGS)}")
