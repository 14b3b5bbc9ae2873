"""Scale: torchrun processes give the same bytes as one process; a run killed with SIGKILL resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ddpm_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
FLAGS = ["--T", "20", "--no-progress", "--device", "cpu"]


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    return path


def per_image(out):
    with np.load(out / "per_image.npz") as f:
        return {k: f[k] for k in f.files}


def assert_same_bytes(a, b):
    for key in ("terms", "mse", "index"):
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def torchrun(*args, nproc=2, timeout=120, command="nll"):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DDPM_BENCH_DIST_TIMEOUT_S": "60", "OMP_NUM_THREADS": "1"}
    # "--": torchrun's parser would otherwise take `--num` for an abbreviation of its own --numa-binding
    return subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc), "-m", "ddpm_bench", "--",
                           command, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this Python")
def test_two_gloo_processes_give_the_bytes_of_one(npz, tmp_path, one_thread):
    one, two = tmp_path / "one", tmp_path / "two"
    model = ["--model", "tests/plugins.py:tiny_conv_T20"]
    assert main(["nll", *model, *FLAGS, "--data", str(npz), "--out", str(one), "--shard-size", "2"]) == 0
    p = torchrun(*model, *FLAGS, "--data", npz, "--out", two, "--shard-size", 2, "--batch-size", 16)
    assert p.returncode == 0, p.stderr
    assert_same_bytes(per_image(one), per_image(two))
    assert (two / "terms.csv").read_bytes() == (one / "terms.csv").read_bytes()
    assert p.stdout.count("total bound") == 1  # only rank 0 prints
    assert len(list((two / "shards").glob("nll_*.npz"))) == 3


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this Python")
def test_two_gloo_processes_give_the_continuous_bound_of_one(npz, tmp_path, one_thread):
    """The continuous-time bound with a pilot's proposal (rank 0 writes it, every rank reads it): the same
    bytes from two processes as from one."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--model", "tests/plugins.py:tiny_conv_T20_fractional", *FLAGS, "--data", str(npz), "--continuous",
            "--draws", "3", "--pilot", "2", "--shard-size", "2"]
    assert main(["nll", *args, "--out", str(one)]) == 0
    p = torchrun(*args, "--out", two, "--batch-size", 4)
    assert p.returncode == 0, p.stderr
    a, b = per_image(one), per_image(two)
    for key in ("bpd", "prior_bpd", "reconstruction_bpd", "diffusion_bpd", "gamma", "integrand", "index"):
        assert np.array_equal(a[key], b[key]), key
    assert p.stdout.count("continuous bound") == 1


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this Python")
def test_a_failure_on_one_rank_stops_every_rank_with_its_message(npz, tmp_path):
    t0 = time.monotonic()
    p = torchrun("--model", "tests/scale_plugins.py:nan_on_rank_1_T20", *FLAGS, "--data", npz, "--out",
                 tmp_path / "o", "--shard-size", 2)
    assert p.returncode != 0 and time.monotonic() - t0 < 60  # no rank waits for the process-group timeout
    assert "NaN/Inf for term(s)" in p.stderr  # the failing rank's own message (torchrun may stop the others first)
    assert not (tmp_path / "o" / "summary.json").exists()


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this Python")
def test_two_gloo_processes_sample_the_bytes_of_one(tmp_path, one_thread):
    one, two = tmp_path / "one", tmp_path / "two"
    flags = ["--model", "tests/sampling_plugins.py:tiny_conv", "--T", "10", "--image-size", "8", "--num", "12",
             "--shard-size", "4", "--batch-size", "3", "--no-progress", "--device", "cpu"]
    assert main(["sample", *flags, "--out", str(one)]) == 0
    p = torchrun(*flags, "--out", two, command="sample")
    assert p.returncode == 0, p.stderr
    names = sorted(q.name for q in one.glob("samples_*.npz"))
    assert names == [f"samples_{s:06d}.npz" for s in range(3)]
    assert sorted(q.name for q in two.glob("samples_*.npz")) == names
    for name in names:
        with np.load(one / name) as a, np.load(two / name) as b:
            for key in ("arr_0", "index"):
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (name, key)
    assert (two / "grid.png").read_bytes() == (one / "grid.png").read_bytes()
    m = json.loads((two / "manifest.json").read_text())
    assert (m["count"], m["complete"], m["processes"], m["network_evals"]) == (12, True, 2, 12 * 10)
    assert m["shards"] == names


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this Python")
def test_two_gloo_processes_extract_fid_features_giving_the_bytes_of_one(tmp_path, one_thread):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "s.npz", rng.integers(0, 256, (50, 16, 16, 3), dtype=np.uint8))
    np.savez(tmp_path / "r.npz", rng.integers(0, 256, (45, 16, 16, 3), dtype=np.uint8))
    flags = ["--samples", tmp_path / "s.npz", "--ref", tmp_path / "r.npz", "--feature-extractor", "tiny-test",
             "--backend", "both", "--shard-size", 8, "--batch-size", 3, "--no-progress", "--device", "cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["fid", *map(str, flags), "--cache-dir", str(tmp_path / "c1"), "--out", str(one)]) == 0
    p = torchrun(*flags, "--cache-dir", tmp_path / "c2", "--out", two, command="fid")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("samples vs") == 1  # only rank 0 prints
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert (m1["processes"], m2["processes"]) == (1, 2)
    for b in ("torch-fidelity", "clean-fid"):
        for key, value in m1["by_backend"][b].items():
            assert m2["by_backend"][b][key] == value, (b, key)  # exactly: the merged features are the same bytes
        assert m2["timing"][b]["samples_images_extracted"] == 50
        with np.load(m1["reference_statistics"][b]["path"]) as a, np.load(m2["reference_statistics"][b]["path"]) as c:
            for key in ("features", "mu", "sigma"):
                assert np.array_equal(a[key], c[key]), (b, key)
    assert m1["fid"] > 0 and m1["is_mean"] > 1


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed next to this Python")
def test_a_feature_extraction_failure_on_one_rank_stops_fid_on_every_rank(tmp_path):
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "s.npz", rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DDPM_BENCH_DIST_TIMEOUT_S": "60", "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    p = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "tests/fid_fail_on_rank_1.py", "fid",
                        "--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz"), "--feature-extractor",
                        "tiny-test", "--shard-size", "8", "--no-progress", "--device", "cpu", "--cache-dir",
                        str(tmp_path / "c"), "--out", str(tmp_path / "o")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and time.monotonic() - t0 < 60  # no rank waits for the process-group timeout
    assert "rank 1: the feature extractor broke" in p.stderr
    assert not (tmp_path / "o" / "metrics.json").exists() and not list((tmp_path / "c").glob("*.npz"))


def test_sigkill_then_rerun_computes_only_missing_shards_and_matches_an_uninterrupted_run(npz, tmp_path):
    out, ref = tmp_path / "out", tmp_path / "ref"
    cmd = [sys.executable, "-m", "ddpm_bench", "nll", "--model", "tests/scale_plugins.py:slow_tiny_conv_T20", *FLAGS,
           "--data", str(npz), "--out", str(out), "--shard-size", "1", "--batch-size", "20"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = out / "shards"
    deadline = time.monotonic() + 60
    while not list(shards.glob("nll_*.npz")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("nll_*.npz")}
    assert 1 <= len(before) < 6 and not (out / "summary.json").exists()
    missing = sorted(set(f"nll_{i:06d}.npz" for i in range(6)) - set(before))
    # a write the kill cut short: a temporary file, never taken for the shard it would have become
    (shards / f".{missing[0]}.x1y2z3.tmp").write_bytes(b"PK\x03\x04 cut short")

    assert subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=120).returncode == 0
    after = {p.name: p.stat().st_mtime_ns for p in shards.glob("nll_*.npz")}
    assert {k: after[k] for k in before} == before  # completed shards were not recomputed
    assert sorted(set(after) - set(before)) == missing
    assert not list(shards.glob("*.tmp"))
    assert main(["nll", "--model", "tests/plugins.py:tiny_conv_T20", *FLAGS, "--data", str(npz), "--out", str(ref),
                 "--shard-size", "1", "--batch-size", "20"]) == 0
    assert_same_bytes(per_image(out), per_image(ref))


def test_counter_noise_does_not_depend_on_its_chunking(monkeypatch):
    import torch

    from ddpm_bench import noise

    keys = torch.randint(-2**62, 2**62, (9, 3))
    whole = noise.counter_normal(5, keys, (3, 8, 8))
    monkeypatch.setattr(noise, "CHUNK_ELEMENTS", 1)  # one row at a time
    assert torch.equal(noise.counter_normal(5, keys, (3, 8, 8)), whole)
    monkeypatch.setattr(noise, "CHUNK_ELEMENTS", 3 * 8 * 8 * 4)  # 4 rows, a partial last chunk
    assert torch.equal(noise.counter_normal(5, keys, (3, 8, 8)), whole)
