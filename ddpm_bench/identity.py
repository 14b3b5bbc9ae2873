"""Identities by content: what a number is tied to.

An identity is a sha256 of content, never of a path:
- the weights actually evaluated: every tensor of the state dict in sorted key order, with its name,
  dtype and shape (so the same weights loaded from a moved, renamed or symlinked file are the same);
- a model: those weights, which of them (ema or raw), the diffusion settings it is evaluated with, and
  its architecture: what else decides its outputs (a checkpoint's stored model config, a diffusers
  UNet's config, a plug-in's callable name and the sha256 of the file that defines it), so two networks
  with equal weights but different code are two models;
- options and manifests: their canonical JSON (sorted keys, no whitespace).
A plug-in without weights (a plain function, or a module with an empty state dict) is identified by its
architecture alone and marked weak (`strong = False`): a change in whatever it reads is not seen.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch

IDENTITY_FORMAT = "ddpm-bench-model-identity/2"


def canonical_json(obj: Any) -> str:
    """The one JSON text of `obj`: sorted keys, no spaces (tuples become lists)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors of a state dict in sorted key order, each with its name, dtype and shape."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too
    return h.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """Who a number belongs to. `sha256` covers everything else here but `origin`, which only says where
    the model was found (a path or MODULE:CALLABLE) for a human reader."""

    sha256: str  # of {format, kind, weights, weights_sha256, diffusion, architecture}
    kind: str  # "ckpt", "diffusers" or "plugin"
    weights: str | None  # "ema" / "raw" for a ddpm-bench checkpoint, None otherwise
    weights_sha256: str | None  # state dict of the evaluated weights; None for a plug-in without weights
    diffusion: dict  # DiffusionConfig as a dict
    architecture: dict  # model config, UNet config, or a plug-in's {callable, source_sha256}
    strong: bool  # False for a plug-in without weights (its code alone identifies it)
    origin: str  # path or MODULE:CALLABLE, informative, not part of the identity

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelIdentity:
        return cls(**{k: d[k] for k in ("sha256", "kind", "weights", "weights_sha256", "diffusion", "architecture",
                                        "strong", "origin")})

    def short(self) -> str:
        return self.sha256[:12]


def model_identity(kind: str, weights: str | None, weights_sha256: str | None, diffusion, architecture: dict,
                   origin: str) -> ModelIdentity:
    """The identity of a model: its weights hash (None: it has none, a weak identity), which weights, its
    DiffusionConfig and its architecture (JSON-able)."""
    diff = asdict(diffusion) if not isinstance(diffusion, dict) else dict(diffusion)
    arch = json.loads(json.dumps(architecture, sort_keys=True, default=str))
    core = {"format": IDENTITY_FORMAT, "kind": kind, "weights": weights, "weights_sha256": weights_sha256,
            "diffusion": diff, "architecture": arch}
    return ModelIdentity(sha256=sha256_json(core), kind=kind, weights=weights, weights_sha256=weights_sha256,
                         diffusion=diff, architecture=arch, strong=weights_sha256 is not None, origin=origin)
