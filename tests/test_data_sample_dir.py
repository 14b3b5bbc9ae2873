"""Sample directories (SPEC section 3): shards in order, and unfinished runs refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddpm_bench.data import load_images
from ddpm_bench.data.sample_dir import load_sample_dir
from ddpm_bench.errors import DataError


def _sample_dir(path, shard_sizes, num, shape=(4, 4, 3)):
    path.mkdir()
    rng = np.random.default_rng(0)
    shards = [rng.integers(0, 256, size=(n, *shape), dtype=np.uint8) for n in shard_sizes]
    for i, a in enumerate(shards):
        np.savez(path / f"samples_{i:06d}.npz", arr_0=a)
    (path / "manifest.json").write_text(json.dumps({"num": num, "seed": 0}))
    return np.concatenate(shards)


def test_shards_concatenated_in_order(tmp_path):
    d = tmp_path / "s"
    expected = _sample_dir(d, [4] * 11 + [2], num=46)  # 11 > 10: order by number, not by string
    (d / ".samples_000012.npz.abc.tmp").write_bytes(b"partial")  # an unfinished atomic write is ignored
    got = load_sample_dir(d)
    np.testing.assert_array_equal(got, expected)
    s = load_images(str(d), num_images=10)
    np.testing.assert_array_equal(s.images, expected[:10])


def test_incomplete_manifest(tmp_path):
    d = tmp_path / "s"
    _sample_dir(d, [4, 4], num=10)
    with pytest.raises(DataError, match=r"incomplete sample directory: the shards hold 8 samples but manifest.json asks for 10"):
        load_sample_dir(d)
    with pytest.raises(DataError, match="incomplete"):
        load_images(str(d))


def test_no_shards_no_count_and_bad_shard(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"num": 5}))
    with pytest.raises(DataError, match="no samples_XXXXXX.npz shards"):
        load_sample_dir(d)
    d = tmp_path / "nocount"
    _sample_dir(d, [2], num=2)
    (d / "manifest.json").write_text(json.dumps({"seed": 0}))
    with pytest.raises(DataError, match="no sample count"):
        load_sample_dir(d)
    d = tmp_path / "mixed"
    _sample_dir(d, [2], num=4)
    np.savez(d / "samples_000001.npz", arr_0=np.zeros((2, 5, 5, 3), np.uint8))
    with pytest.raises(DataError, match=r"samples_000001\.npz: images of shape"):
        load_sample_dir(d)
    np.savez(d / "samples_000001.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(DataError, match=r"samples_000001\.npz: images must be uint8"):
        load_sample_dir(d)
