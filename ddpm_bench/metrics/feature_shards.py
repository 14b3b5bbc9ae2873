"""Feature extraction in resumable shards, split over the ranks of a torchrun launch and merged exactly.

Images [s * shard_size, (s + 1) * shard_size) form shard s. Rank r extracts the missing shards with
s % world == r, each on its own in batches starting at the shard's first image, and writes
`features_XXXXXX.npz` atomically: one float32 (n, D) array per feature layer, `index` (the image numbers)
and `images_sha256` (of the shard's images). Because a shard is computed the same way whichever process
computes it, the merged features are the same bytes for 1 or N processes and for a run that was killed
and started again with the same batch size. After every rank has finished (`distributed.agree`), rank 0
reads the shards back in order. Each shard also carries the `run_id` of its fid run and is checked like
every shard (`ddpm_bench.run_dir.read_shard`): one that is there but does not belong is extracted again
at resume, and refused at merge.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddpm_bench import distributed
from ddpm_bench.errors import DataError
from ddpm_bench.messages import warn
from ddpm_bench.run_dir import ShardError, ShardPlan, read_shard, write_shard

Extract = Callable[[np.ndarray], dict[str, np.ndarray]]  # uint8 (n, H, W, C) -> {layer: (n, D) float32}
IMAGES_SHA256, BATCH_SIZE = "images_sha256", "batch_size"


def shard_name(s: int) -> str:
    return f"features_{s:06d}.npz"


@dataclass
class Extracted:
    features: dict[str, np.ndarray] | None  # merged {layer: (N, D)}; None on ranks other than 0
    extracted: int  # images extracted by this run, over all ranks (0 when every shard was already there)


def _images_sha256(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def _read_shard(path: Path, run_id: str, index: np.ndarray, images: np.ndarray,
                check_images: bool) -> dict[str, np.ndarray]:
    """The layers of a shard file, checked to be of this run and these images (run_dir.read_shard)."""
    arrays = read_shard(path, run_id, index, None)
    sha = str(arrays.pop(IMAGES_SHA256, ""))
    arrays.pop(BATCH_SIZE, None)
    if check_images and sha != _images_sha256(images[index[0]: index[-1] + 1]):
        raise DataError(f"{path}: was extracted from other images; delete it to recompute")
    return arrays


def _is_done(path: Path, run_id: str, index: np.ndarray, images: np.ndarray) -> bool:
    if not path.exists():
        return False
    try:
        _read_shard(path, run_id, index, images, check_images=True)
        return True
    except (ShardError, DataError) as e:
        problem = e.problem if isinstance(e, ShardError) else str(e).split("; delete it")[0]
        warn(f"{problem}; extracting it again")
        path.unlink(missing_ok=True)
        return False


def extract_in_shards(images: np.ndarray, extract: Extract, folder: str | Path, shard_size: int, batch_size: int,
                      label: str, run_id: str, progress: bool = True) -> Extracted:
    """Features of uint8 (N, H, W, C) `images` by `extract`, through shard files in `folder` that carry
    `run_id` (the fid run's); a collective under torchrun (every rank calls it with the same images)."""
    folder = Path(folder)
    main = distributed.is_main()
    plan = ShardPlan(len(images), shard_size)
    ranges = plan.ranges()
    # rank 0's view, taken before any rank writes: every rank then works from the same list; a shard that is
    # there but does not belong (another run, other images, cut off) is named, removed and extracted again
    missing = plan.missing(lambda s: _is_done(folder / shard_name(s), run_id, ranges[s], images))
    mine = plan.owned(missing)
    error = None
    try:
        bar = _progress(sum(len(ranges[s]) for s in mine), label, progress and main)
        for s in mine:
            index = ranges[s]
            chunk = images[index[0]: index[-1] + 1]
            feats = extract(chunk)
            for layer, f in feats.items():
                if f.shape[0] != len(index):
                    raise DataError(f"{label}: the extractor returned {f.shape[0]} {layer} features for "
                                    f"{len(index)} images")
            write_shard(folder / shard_name(s), run_id, index, **feats,
                        **{IMAGES_SHA256: np.array(_images_sha256(chunk)), BATCH_SIZE: np.int64(batch_size)})
            bar.update(len(index))
        bar.close()
    except Exception as e:
        error = e
    distributed.agree(error)
    extracted = int(sum(len(ranges[s]) for s in missing))
    if not main:
        return Extracted(None, extracted)
    computed_here = set(mine)
    parts = [_read_shard(folder / shard_name(s), run_id, ranges[s], images, check_images=s not in computed_here)
             for s in range(len(ranges))]
    layers = sorted(parts[0]) if parts else []
    for s, p in enumerate(parts):
        if sorted(p) != layers:
            raise DataError(f"{folder / shard_name(s)}: holds layers {sorted(p)}, not {layers}; delete it to recompute")
    return Extracted({k: np.concatenate([p[k] for p in parts]) for k in layers}, extracted)


def _progress(total: int, label: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=label, disable=not enabled or total == 0, file=sys.stderr)
