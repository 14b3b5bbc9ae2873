"""Feature shards of `ddpm-bench fid`: a run stopped part-way resumes with only the missing shards and ends
with the numbers of an uninterrupted run; shards of other images are refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ddpm_bench.cli import main
from ddpm_bench.errors import UserError
from ddpm_bench.messages import DdpmBenchWarning
from ddpm_bench.metrics import feature_shards, torch_fidelity_backend
from ddpm_bench.metrics.extractors import TINY_TEST

RUN = "ab" * 32  # the run id the shards carry


def _images(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float64)
    up = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)
    return np.clip(up + rng.normal(0, 20, up.shape), 0, 255).astype(np.uint8)


def _features(images: np.ndarray) -> dict[str, np.ndarray]:
    """A per-image stand-in extractor: channel means and maxima, float32."""
    x = images.astype(np.float32)
    return {"mean": x.mean(axis=(1, 2)), "max": x.max(axis=(1, 2))}


class Counting:
    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = [], fail_after

    def __call__(self, images):
        if self.fail_after is not None and len(self.calls) == self.fail_after:
            raise RuntimeError("stopped")
        self.calls.append(len(images))
        return _features(images)


def test_shards_merge_to_the_features_of_one_pass_and_resume_only_what_is_missing(tmp_path):
    images = _images(0, 23)
    whole = _features(images)
    first = Counting(fail_after=2)
    with pytest.raises(RuntimeError, match="stopped"):
        feature_shards.extract_in_shards(images, first, tmp_path, 5, 8, "x", RUN, progress=False)
    assert sorted(p.name for p in tmp_path.glob("features_*.npz")) == ["features_000000.npz", "features_000001.npz"]
    again = Counting()
    got = feature_shards.extract_in_shards(images, again, tmp_path, 5, 8, "x", RUN, progress=False)
    assert again.calls == [5, 5, 3] and got.extracted == 13  # shards 2, 3, 4 only
    for layer in ("mean", "max"):
        assert got.features[layer].dtype == np.float32 and np.array_equal(got.features[layer], whole[layer])
    assert feature_shards.extract_in_shards(images, Counting(fail_after=0), tmp_path, 5, 8, "x", RUN,
                                            progress=False).extracted == 0  # all there: no extraction


def test_a_shard_that_does_not_belong_is_extracted_again_and_refused_at_merge(tmp_path):
    images = _images(0, 10)
    want = feature_shards.extract_in_shards(images, _features, tmp_path, 5, 8, "x", RUN, progress=False).features
    other = images.copy()
    other[7, 0, 0, 0] ^= 1
    with pytest.warns(DdpmBenchWarning, match="features_000001.npz: was extracted from other images"):
        got = feature_shards.extract_in_shards(other, Counting(), tmp_path, 5, 8, "x", RUN, progress=False)
    assert got.extracted == 5
    (tmp_path / "features_000000.npz").write_bytes(b"PK\x03\x04 cut short")
    feature_shards.extract_in_shards(images, _features, tmp_path / "other", 5, 8, "x", "another run", progress=False)
    shutil.copy(tmp_path / "other" / "features_000001.npz", tmp_path / "features_000001.npz")
    again = Counting()
    with pytest.warns(DdpmBenchWarning) as caught:
        got = feature_shards.extract_in_shards(images, again, tmp_path, 5, 8, "x", RUN, progress=False)
    err = "\n".join(str(w.message) for w in caught)
    assert again.calls == [5, 5] and "features_000000.npz: unreadable or cut-off shard" in err
    assert "features_000001.npz: belongs to another run" in err
    for layer in want:
        assert np.array_equal(got.features[layer], want[layer])
    # at merge a shard swapped in behind the check is refused by name, never merged
    with pytest.raises(UserError, match="features_000001.npz: belongs to another run"):
        feature_shards._read_shard(tmp_path / "other" / "features_000001.npz", RUN, np.arange(5, 10), images, True)


def _fid(tmp_path, out, *args) -> int:
    return main(["fid", "--feature-extractor", TINY_TEST, "--device", "cpu", "--no-progress", "--backend", "both",
                 "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "r.npz"), "--out", str(out), *args])


def test_fid_stopped_after_extraction_resumes_without_extracting_and_gives_the_same_numbers(tmp_path, monkeypatch):
    np.savez(tmp_path / "s.npz", _images(1, 70))
    np.savez(tmp_path / "r.npz", _images(2, 90))
    assert _fid(tmp_path, tmp_path / "whole", "--cache-dir", str(tmp_path / "c1"), "--shard-size", "16") == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert not (tmp_path / "whole" / "features").exists()  # shards are removed once metrics.json is written

    def stop(*a, **k):
        raise KeyboardInterrupt  # as a kill between the features and the metrics

    out = tmp_path / "stopped"
    monkeypatch.setattr(torch_fidelity_backend, "metrics", stop)
    assert _fid(tmp_path, out, "--cache-dir", str(tmp_path / "c2"), "--shard-size", "16") == 130
    monkeypatch.undo()
    assert not (out / "metrics.json").exists()
    assert len(list((out / "features" / "samples-torch-fidelity").glob("features_*.npz"))) == 5
    assert _fid(tmp_path, out, "--cache-dir", str(tmp_path / "c2"), "--shard-size", "16") == 0
    resumed = json.loads((out / "metrics.json").read_text())
    for b in ("torch-fidelity", "clean-fid"):
        assert resumed["timing"][b]["samples_images_extracted"] == 0
        ref = resumed["reference_statistics"][b]
        # torch-fidelity's reference statistics were cached before the stop; clean-fid's come from its kept shards
        assert (ref["from"], ref.get("images_extracted")) == (("cache", None) if b == "torch-fidelity" else ("computed", 0))
        for key in ("fid", "kid_mean", "kid_std", "isc_mean", "isc_std", "precision", "recall", "kid"):
            assert resumed["by_backend"][b].get(key) == whole["by_backend"][b].get(key), (b, key)
    assert whole["timing"]["torch-fidelity"]["samples_images_extracted"] == 70
    # another shard size is another run: refused, the difference named
    assert _fid(tmp_path, out, "--cache-dir", str(tmp_path / "c2"), "--shard-size", "8") == 2
