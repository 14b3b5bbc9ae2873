"""A sample directory (SPEC section 3) as one uint8 (N, H, W, C) array.

Layout assumed (as `ddpm-bench sample` writes it): shards `samples_XXXXXX.npz`, each with `arr_0` uint8
NHWC, read in the order of their number (the number is not otherwise interpreted: it may count shards or
the first sample of the shard), and `manifest.json` with the number of samples the run was asked for
under the key `"num"` (`"count"` is accepted too). Temporary files (`.samples_*.tmp`) are ignored.

A directory whose shards hold fewer (or more) samples than the manifest asks for is refused as
incomplete: it is an unfinished sampling run, and running `ddpm-bench sample` again with the same
`--out` finishes it. A manifest without a count is refused, since completeness could not be checked.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ddpm_bench.data import validate_images
from ddpm_bench.data.npz import load_npz
from ddpm_bench.errors import DataError

MANIFEST = "manifest.json"
SHARD_RE = re.compile(r"^samples_(\d{6,})\.npz$")
COUNT_KEYS = ("num", "count")


def manifest_count(folder: Path) -> int:
    """The number of samples the run was asked for, from `manifest.json`."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable JSON manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object")
    for key in COUNT_KEYS:
        value = manifest.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    raise DataError(f"{path}: no sample count (key 'num' or 'count'); cannot tell whether the run finished")


def shard_paths(folder: Path) -> list[Path]:
    """`samples_XXXXXX.npz` files in the order of their number."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := SHARD_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def load_sample_dir(path: str | Path) -> np.ndarray:
    """All samples of a finished sample directory, concatenated in shard order: uint8 (N, H, W, C)."""
    folder = Path(path)
    expected = manifest_count(folder)
    shards = shard_paths(folder)
    if not shards:
        raise DataError(f"{folder}: incomplete sample directory: no samples_XXXXXX.npz shards "
                        f"(manifest asks for {expected}); run `ddpm-bench sample` again with --out {folder}")
    parts = []
    for p in shards:
        a = load_npz(p)
        if parts and a.shape[1:] != parts[0].shape[1:]:
            raise DataError(f"{p}: images of shape {a.shape[1:]} but {shards[0].name} has {parts[0].shape[1:]}")
        parts.append(a)
    total = sum(len(a) for a in parts)
    if total != expected:
        raise DataError(f"{folder}: incomplete sample directory: the shards hold {total} samples but "
                        f"{MANIFEST} asks for {expected}; run `ddpm-bench sample` again with --out {folder} "
                        "to finish it")
    return validate_images(np.concatenate(parts, axis=0), str(folder))
