"""A sample directory as one uint8 (N, H, W, C) array, every shard checked.

Layout (as `ddpm-bench sample` writes it): `manifest.json` (`ddpm_bench.outputs.SampleManifest`: the
run's `run_id`, the model identity, seed, `num` and `shard_size`) and shards `samples_XXXXXX.npz`, shard s
holding `arr_0` uint8 NHWC of sample numbers [s * shard_size, (s + 1) * shard_size), their `index` and
the `run_id` of the run. Every shard is checked against the manifest when read: a shard of another run
(other seed, other model, other settings), of other sample numbers, or cut off is refused by name.
A directory with missing shards is an unfinished sampling run: running `ddpm-bench sample` again with
the same `--out` finishes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpm_bench.data.images import validate_images
from ddpm_bench.errors import DataError
from ddpm_bench.outputs import OutputFileError, SampleManifest, sample_shard_name

MANIFEST = SampleManifest.FILE


def read_manifest(folder: Path) -> SampleManifest:
    try:
        return SampleManifest.read(folder)
    except OutputFileError as e:
        raise DataError(str(e)) from None


def load_sample_dir(path: str | Path) -> np.ndarray:
    """All samples of a finished sample directory in sample-number order: uint8 (N, H, W, C)."""
    from ddpm_bench.run_dir import ShardPlan, read_shard

    folder = Path(path)
    manifest = read_manifest(folder)
    plan = ShardPlan(manifest.num, manifest.shard_size)
    missing = [sample_shard_name(s) for s in range(plan.num_shards) if not (folder / sample_shard_name(s)).is_file()]
    if missing:
        raise DataError(f"{folder}: incomplete sample directory: {len(missing)} of {plan.num_shards} shards missing "
                        f"(first {missing[0]}; {MANIFEST} asks for {manifest.num} samples); run `ddpm-bench sample` "
                        f"again with --out {folder} to finish it")
    c, h, w = manifest.image_shape
    parts = []
    for s in range(plan.num_shards):
        shard = folder / sample_shard_name(s)
        a = read_shard(shard, manifest.run_id, plan.items(s), ("arr_0",),
                       require_content_hash=manifest.format != SampleManifest.LEGACY_FORMAT)["arr_0"]
        if a.dtype != np.uint8 or a.shape[1:] != (h, w, c):
            raise DataError(f"{shard}: images are {a.dtype} {a.shape[1:]}, but {MANIFEST} says uint8 {(h, w, c)}")
        parts.append(a)
    return validate_images(np.concatenate(parts, axis=0), str(folder))
