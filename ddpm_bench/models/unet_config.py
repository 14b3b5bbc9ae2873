"""The arguments of the paper's U-Net (Appendix B) as a checked dataclass: the `[model]` table of a recipe
and the `model` config stored in a checkpoint (a leaf: the recipe loader and the network builder use it)."""

from __future__ import annotations

from dataclasses import dataclass

from ddpm_bench.typecheck import is_int


@dataclass(frozen=True)
class ModelConfig:
    """Arguments of the paper's U-Net (Appendix B); the CIFAR-10 model by default."""

    name: str = "unet"
    image_size: int = 32
    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    out_channels: int = 0  # 0: in_channels, or 2 * in_channels for the learned variance types
    norm_groups: int = 32  # GroupNorm groups (the paper's 32); every channel count must be a multiple
    num_heads: int = 1  # attention heads (the paper: 1; improved DDPM's CIFAR-10 models: 4)
    scale_shift_norm: bool = False  # improved DDPM's use_scale_shift_norm

    def __post_init__(self) -> None:
        # types first: a stored checkpoint config reaches here without the recipe's type checks
        for name in ("image_size", "in_channels", "ch", "num_res_blocks", "out_channels", "norm_groups", "num_heads"):
            if not is_int(getattr(self, name)):
                raise ValueError(f"model.{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("ch_mult", "attn_resolutions"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(is_int(v) for v in value):
                raise ValueError(f"model.{name} must be a list of integers, got {value!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ValueError(f"model.dropout must be a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.scale_shift_norm, bool):
            raise ValueError(f"model.scale_shift_norm must be true or false, got {self.scale_shift_norm!r}")
        for name in ("image_size", "in_channels", "ch", "num_res_blocks", "norm_groups", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError(f"model.ch_mult must be a non-empty list of positive integers, got {list(self.ch_mult)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must lie in [0, 1), got {self.dropout}")
        if self.out_channels < 0:
            raise ValueError(f"model.out_channels must be >= 0, got {self.out_channels}")
        if self.name == "unet" and self.ch % self.norm_groups:  # every channel count is a multiple of ch
            raise ValueError(f"model.ch must be a multiple of model.norm_groups {self.norm_groups} (GroupNorm), "
                             f"got {self.ch}")
        if self.name == "unet" and self.ch % self.num_heads:  # then every attention block's too
            raise ValueError(f"model.ch must be a multiple of model.num_heads {self.num_heads}, got {self.ch}")
        if self.name == "unet":
            resolutions = [self.image_size // 2**k for k in range(len(self.ch_mult))]
            if self.image_size % 2 ** (len(self.ch_mult) - 1):
                raise ValueError(f"model.image_size {self.image_size} is not divisible by 2^{len(self.ch_mult) - 1} "
                                 f"(ch_mult {list(self.ch_mult)})")
            if set(self.attn_resolutions) - set(resolutions):  # attention there would silently never be built
                raise ValueError(f"model.attn_resolutions {list(self.attn_resolutions)}: the model's resolutions are "
                                 f"{resolutions} (image_size {self.image_size}, ch_mult {list(self.ch_mult)}); "
                                 f"{sorted(set(self.attn_resolutions) - set(resolutions))} matches none")
