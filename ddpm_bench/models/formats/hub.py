"""A diffusers model on the Hugging Face Hub (`--ckpt hf:ORG/NAME[@REVISION]`, e.g. hf:google/ddpm-cifar10-32):
resolved through `huggingface_hub` (downloaded when online, from the local cache otherwise; `HF_HUB_OFFLINE`
and `DDPM_BENCH_OFFLINE` are respected, read when the model is loaded), then loaded as a diffusers directory.
The resolved revision (the commit) is recorded in the provenance; the identity is the weights', as for the
same files in any directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ddpm_bench.arguments import given
from ddpm_bench.errors import CheckpointError, UserError
from ddpm_bench.models.formats import diffusers_dir
from ddpm_bench.models.loaded import LoadedModel
from ddpm_bench.models.spec import ModelSpec

NAME = "hub"
PREFIX = "hf:"
PATTERNS = ["*.json", "*.safetensors", "*.bin", "*/*.json", "*/*.safetensors", "*/*.bin"]
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
OFFLINE_ENV = ("HF_HUB_OFFLINE", "DDPM_BENCH_OFFLINE")


def detect(spec: ModelSpec) -> bool:
    return spec.ckpt is not None and spec.ckpt.startswith(PREFIX)


def parse(ckpt: str) -> tuple[str, str | None]:
    """`hf:ORG/NAME[@REVISION]` -> (ORG/NAME, REVISION or None)."""
    repo, _, revision = ckpt[len(PREFIX):].partition("@")
    if not REPO_ID.match(repo) or (_ and not revision):
        raise UserError(f"{given('source', ckpt)}: expected hf:ORG/NAME or hf:ORG/NAME@REVISION")
    return repo, revision or None


def offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no") for name in OFFLINE_ENV)


def resolve(ckpt: str) -> tuple[Path, str]:
    """The local snapshot folder of `ckpt` and its commit."""
    repo, revision = parse(ckpt)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise UserError(f"{given('source', ckpt)}: models on the Hub need huggingface_hub and diffusers: "
                        f"{diffusers_dir.INSTALL_HINT}") from None
    cache = os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME")
                                               else None)
    try:
        folder = snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=offline(),
                                   allow_patterns=PATTERNS)
    except LocalEntryNotFoundError:
        where = cache or "the Hugging Face cache"
        how = "unset HF_HUB_OFFLINE / DDPM_BENCH_OFFLINE to download it" if offline() else \
            "the Hub could not be reached"
        raise CheckpointError(f"{given('source', ckpt)}: {repo}{'@' + revision if revision else ''} is not in {where} and "
                              f"{how}; on a machine with network, `hf download {repo}` (huggingface_hub's command) fills the cache "
                              "(copy it here, and point HF_HUB_CACHE at it)") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{given('source', ckpt)}: {first}") from None
    folder = Path(folder)
    return folder, folder.name


def load(spec: ModelSpec) -> LoadedModel:
    folder, commit = resolve(spec.ckpt)
    repo, revision = parse(spec.ckpt)
    return diffusers_dir.load_directory(folder, spec.diffusion_flags, origin=spec.ckpt,
                                        provenance={"hub": {"repo": repo, "revision": revision, "commit": commit}})
