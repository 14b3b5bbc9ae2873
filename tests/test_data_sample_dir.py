"""Sample directories (SPEC section 3): every shard checked against the manifest, unfinished runs refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ddpm_bench.cli import main
from ddpm_bench.data import load_images
from ddpm_bench.data.sample_dir import load_sample_dir
from ddpm_bench.errors import UserError

PLUGINS = Path(__file__).parent / "sampling_plugins.py"


def sample_dir(out: Path, *extra: str, num: int = 10, shard_size: int = 4) -> Path:
    assert main(["sample", "--model", f"{PLUGINS}:tiny_conv", "--T", "10", "--image-size", "4", "--no-progress",
                 "--num", str(num), "--shard-size", str(shard_size), "--out", str(out), *extra]) == 0
    return out


def test_shards_in_sample_number_order(tmp_path):
    d = sample_dir(tmp_path / "s", num=46, shard_size=4)  # 12 shards: order by number, not by string
    (d / ".samples_000012.npz.abc.tmp").write_bytes(b"partial")  # an unfinished atomic write is ignored
    got = load_sample_dir(d)
    parts = []
    for s in range(12):
        with np.load(d / f"samples_{s:06d}.npz") as z:
            parts.append(z["arr_0"])
    np.testing.assert_array_equal(got, np.concatenate(parts))
    s = load_images(str(d), num_images=10)
    np.testing.assert_array_equal(s.images, got[:10])


def test_a_missing_shard_is_an_unfinished_run(tmp_path):
    d = sample_dir(tmp_path / "s")
    (d / "samples_000001.npz").unlink()
    with pytest.raises(UserError, match=r"incomplete sample directory: 1 of 3 shards missing \(first samples_000001"):
        load_sample_dir(d)


@pytest.mark.parametrize("other", [("--seed", "1"), ("--T", "12")], ids=["other-seed", "other-model"])
def test_a_shard_of_another_run_is_refused_by_name(tmp_path, other):
    d = sample_dir(tmp_path / "s")
    e = sample_dir(tmp_path / "other", *other)
    shutil.copy(e / "samples_000001.npz", d / "samples_000001.npz")
    with pytest.raises(UserError, match=r"samples_000001\.npz: belongs to another run"):
        load_sample_dir(d)


def test_a_shard_of_other_sample_numbers_or_cut_off_is_refused(tmp_path):
    d = sample_dir(tmp_path / "s")
    shutil.copy(d / "samples_000000.npz", d / "samples_000001.npz")
    with pytest.raises(UserError, match=r"samples_000001\.npz: holds items 0\.\.3, not 4\.\.7"):
        load_sample_dir(d)
    d = sample_dir(tmp_path / "t")
    data = (d / "samples_000002.npz").read_bytes()
    (d / "samples_000002.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"samples_000002\.npz: unreadable or cut-off shard"):
        load_sample_dir(d)


@pytest.mark.parametrize("manifest, message", [
    ("garbage{", "manifest.json: unreadable JSON"),
    ('{"format": "ddpm-bench-samples/1"}', "manifest.json: field 'run_id' is missing"),
    (None, "manifest.json: field 'num' is str"),
])
def test_a_bad_manifest_names_the_file_and_field(tmp_path, manifest, message):
    d = sample_dir(tmp_path / "s")
    if manifest is None:
        m = json.loads((d / "manifest.json").read_text())
        manifest = json.dumps({**m, "num": "10"})
    (d / "manifest.json").write_text(manifest)
    with pytest.raises(UserError, match=message):
        load_sample_dir(d)
