"""`ddpm-bench sample`: shards, manifest, grids, resume, settings changes, NaN models, dry run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_bench.cli import main

PLUGINS = Path(__file__).parent / "sampling_plugins.py"
REPO = Path(__file__).resolve().parent.parent
BASE = ["sample", "--model", f"{PLUGINS}:tiny_conv", "--T", "20", "--image-size", "8", "--no-progress"]


def sample(out: Path, *extra: str) -> int:
    return main([*BASE, "--out", str(out), *extra])


def load_all(out: Path) -> tuple[np.ndarray, np.ndarray]:
    images, index = [], []
    for f in sorted(out.glob("samples_*.npz")):
        with np.load(f) as z:
            images.append(z["arr_0"])
            index.append(z["index"])
    return np.concatenate(images), np.concatenate(index)


def test_writes_shards_manifest_and_grids(tmp_path):
    out = tmp_path / "s"
    assert sample(out, "--num", "10", "--batch-size", "3", "--shard-size", "4", "--progressive-every", "5") == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png", "manifest.json", "progressive.npz", "progressive.png", "run.json",
                     "samples_000000.npz", "samples_000001.npz", "samples_000002.npz"]
    for s, n in enumerate((4, 4, 2)):
        with np.load(out / f"samples_{s:06d}.npz") as z:
            assert z["arr_0"].dtype == np.uint8 and z["arr_0"].shape == (n, 8, 8, 3)
            assert z["index"].tolist() == list(range(4 * s, 4 * s + n))
    m = json.loads((out / "manifest.json").read_text())
    assert (m["num"], m["count"], m["complete"], m["shard_size"], m["seed"]) == (10, 10, True, 4, 0)
    assert m["sampler"]["steps"] == 20 and m["sampler"]["clip"] is True
    assert m["diffusion"]["T"] == 20 and m["network_evals"] == 200
    assert m["model"]["kind"] == "plugin" and len(m["model"]["sha256"]) == 64
    assert m["environment"]["versions"]["torch"]
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (2 * 34 + 2, 8 * 34 + 2, 3)  # 10 samples, 8 per row, 4x nearest-neighbour, 2-pixel padding
    images, _ = load_all(out)
    big = images.repeat(4, axis=1).repeat(4, axis=2)
    assert np.array_equal(grid[2:34, 2:34], big[0]) and np.array_equal(grid[36:68, 2:34], big[8])
    with np.load(out / "progressive.npz") as z:
        assert z["x0_pred"].shape == (8, 4, 8, 8, 3)
        assert z["t"].tolist() == [k + 1 for k in reversed(range(20)) if k % 5 == 0]
        assert np.array_equal(z["x0_pred"][:, -1], images[:8])  # last column: the samples themselves
    prog = np.asarray(Image.open(out / "progressive.png"))
    assert prog.shape == (8 * 66 + 2, 4 * 66 + 2, 3)  # 4 columns of 8x8 images enlarged 8x: 266 >= 256 wide


def test_batch_size_and_restarts_do_not_change_a_byte(tmp_path):
    ref = tmp_path / "ref"
    assert sample(ref, "--num", "7", "--batch-size", "7", "--shard-size", "3") == 0
    want, index = load_all(ref)
    assert index.tolist() == list(range(7))
    for b in ("1", "4"):
        out = tmp_path / f"b{b}"
        assert sample(out, "--num", "7", "--batch-size", b, "--shard-size", "3") == 0
        assert np.array_equal(load_all(out)[0], want)
    # a restart: shard 1 missing (as after a kill); only it is recomputed, with another batch size
    out = tmp_path / "b4"
    kept = (out / "samples_000000.npz").stat().st_mtime_ns
    (out / "samples_000001.npz").unlink()
    assert sample(out, "--num", "7", "--batch-size", "2", "--shard-size", "3") == 0
    assert (out / "samples_000000.npz").stat().st_mtime_ns == kept
    assert np.array_equal(load_all(out)[0], want)
    m = json.loads((out / "manifest.json").read_text())
    assert m["resumed"] is True and m["network_evals"] == 3 * 20 and m["count"] == 7


def test_other_settings_on_resume_exit_2(tmp_path, capsys):
    out = tmp_path / "s"
    assert sample(out, "--num", "3") == 0
    assert sample(out, "--num", "3", "--seed", "1") == 2
    err = capsys.readouterr().err
    assert "seed" in err and "--force" in err
    assert sample(out, "--num", "3", "--steps", "5") == 2
    assert "steps" in capsys.readouterr().err
    assert sample(out, "--num", "3", "--seed", "1", "--force") == 0


def test_nan_model_exits_2_naming_samples_and_writes_no_shard_for_them(tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["sample", "--model", f"{PLUGINS}:nan_model", "--T", "10", "--image-size", "8", "--no-progress",
            "--num", "12", "--batch-size", "2", "--shard-size", "2", "--out", str(out)]
    # which samples have x_T[0, 0, 0] > 1 (the plug-in's NaN rule)
    import torch

    from ddpm_bench.sampling import PURPOSE_PRIOR, sample_noise

    x_T = sample_noise(0, torch.arange(12), 10, PURPOSE_PRIOR, (3, 8, 8))
    bad = [j for j in range(12) if float(x_T[j, 0, 0, 0]) > 1.0]
    assert bad, "pick another seed: no sample triggers the NaN"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not finite" in err and str(bad[0]) in err
    first_bad_shard = bad[0] // 2
    shards = sorted(p.name for p in out.glob("samples_*.npz"))
    assert shards == [f"samples_{s:06d}.npz" for s in range(first_bad_shard)]


def test_dry_run_prints_evaluations_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "s"
    assert sample(out, "--num", "30", "--steps", "5", "--batch-size", "8", "--dry-run") == 0
    line = capsys.readouterr().out
    assert "150 network evaluations" in line and "ETA" in line
    assert not out.exists()


def test_bad_flags_exit_2(tmp_path, capsys):
    assert sample(tmp_path / "a", "--num", "0") == 2
    assert "--num" in capsys.readouterr().err
    assert sample(tmp_path / "b", "--num", "2", "--steps", "21") == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["sample", "--num", "2", "--out", str(tmp_path / "c")]) == 2  # no model source


def test_help_lists_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = capsys.readouterr().out
    for flag in ("--ckpt", "--model", "--num", "--batch-size", "--seed", "--steps", "--image-size", "--channels",
                 "--device", "--precision", "--shard-size", "--progressive-every", "--dry-run", "--out", "--force"):
        assert flag in text
    assert "(default: 128)" in text and "(default: 500)" in text


def test_sigkill_between_shards_then_resume(tmp_path):
    """A real kill of the command line between shards; the rerun finishes with the same bytes."""
    ref = tmp_path / "ref"
    assert sample(ref, "--num", "6", "--batch-size", "6", "--shard-size", "1", "--T", "60") == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ddpm_bench", *BASE, "--T", "60", "--num", "6", "--batch-size", "1",
           "--shard-size", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "samples_000001.npz").exists() and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in out.glob("samples_*.npz"))
    assert 2 <= len(done) <= 6
    assert sample(out, "--num", "6", "--batch-size", "4", "--shard-size", "1", "--T", "60") == 0
    assert np.array_equal(load_all(out)[0], load_all(ref)[0])


def test_progressive_grid_is_recomputed_identically_on_resume(tmp_path):
    out = tmp_path / "s"
    args = ("--num", "3", "--T", "12", "--progressive-every", "4")
    assert sample(out, *args) == 0
    with np.load(out / "progressive.npz") as z:
        want = z["x0_pred"]
    (out / "progressive.npz").unlink()
    (out / "progressive.png").unlink()
    assert sample(out, *args, "--batch-size", "1") == 0  # shards are done: the rows are recomputed
    with np.load(out / "progressive.npz") as z:
        assert np.array_equal(z["x0_pred"], want) and z["x0_pred"].shape[:2] == (3, 3)
    assert (out / "progressive.png").exists()


def test_bf16_precision_runs_and_stays_close(tmp_path):
    a, b = tmp_path / "fp32", tmp_path / "bf16"
    assert sample(a, "--num", "2", "--T", "8") == 0
    assert sample(b, "--num", "2", "--T", "8", "--precision", "bf16") == 0
    diff = np.abs(load_all(a)[0].astype(int) - load_all(b)[0].astype(int))
    assert 0 < diff.max() <= 16 and json.loads((b / "manifest.json").read_text())["sampler"]["precision"] == "bf16"


def test_a_complete_directory_is_not_rewritten(tmp_path, capsys):
    out = tmp_path / "s"
    args = ("--num", "5", "--shard-size", "2", "--T", "8", "--progressive-every", "4")
    assert sample(out, *args) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    stored = json.loads((out / "manifest.json").read_text())
    capsys.readouterr()
    assert sample(out, *args, "--batch-size", "1") == 0
    assert f"sample: {out} is already complete" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert json.loads((out / "manifest.json").read_text()) == stored


def test_channels_last_sampler_stays_within_one_level_and_is_recorded(tmp_path):
    a, b = tmp_path / "plain", tmp_path / "cl"
    assert sample(a, "--num", "6", "--T", "8", "--batch-size", "3", "--no-channels-last") == 0
    assert sample(b, "--num", "6", "--T", "8", "--batch-size", "3", "--channels-last") == 0
    diff = np.abs(load_all(a)[0].astype(int) - load_all(b)[0].astype(int))
    assert diff.max() <= 1  # the float32 rounding of another convolution layout, nothing more
    run = json.loads((b / "manifest.json").read_text())["network_execution"]
    assert run == {"device": "cpu", "precision": "fp32", "channels_last": True, "channels_last_from": "flag",
                   "compile": None, "cuda_graphs": False}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_sampler_stays_within_one_level(tmp_path, mode):
    a, b = tmp_path / "eager", tmp_path / mode
    assert sample(a, "--num", "4", "--T", "8") == 0
    assert sample(b, "--num", "4", "--T", "8", "--compile", mode) == 0  # reduce-overhead: no CUDA graphs on a CPU
    diff = np.abs(load_all(a)[0].astype(int) - load_all(b)[0].astype(int))
    assert diff.max() <= 1
    assert json.loads((b / "manifest.json").read_text())["network_execution"]["compile"] == mode


def test_another_progressive_every_is_recorded_again_not_already_complete(tmp_path, capsys):
    out = tmp_path / "s"
    assert sample(out, "--num", "4", "--shard-size", "2", "--progressive-every", "5") == 0
    shards = {p.name: p.stat().st_mtime_ns for p in out.glob("samples_*.npz")}
    assert sample(out, "--num", "4", "--shard-size", "2", "--progressive-every", "2") == 0
    with np.load(out / "progressive.npz") as z:
        assert int(z["every"]) == 2 and z["x0_pred"].shape[1] == 10  # T = 20 steps, every 2
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("samples_*.npz")} == shards  # samples kept
    (out / "progressive.npz").write_bytes(b"cut")  # a cut-off progressive file is written again
    assert sample(out, "--num", "4", "--shard-size", "2", "--progressive-every", "2") == 0
    with np.load(out / "progressive.npz") as z:
        assert int(z["every"]) == 2


def test_ddim_samples_do_not_depend_on_batch_size_or_restarts(tmp_path):
    ref = tmp_path / "ref"
    args = ("--num", "5", "--shard-size", "2", "--sampler", "ddim", "--steps", "5")
    assert sample(ref, *args, "--batch-size", "5") == 0
    want, _ = load_all(ref)
    manifest = json.loads((ref / "manifest.json").read_text())
    assert manifest["sampler"]["sampler"] == "ddim" and manifest["sampler"]["eta"] == 0.0
    other = tmp_path / "b1"
    assert sample(other, *args, "--batch-size", "1") == 0
    assert np.array_equal(load_all(other)[0], want)
    (other / "samples_000001.npz").unlink()  # a run killed before its second shard: resume
    assert sample(other, *args, "--batch-size", "2") == 0
    assert np.array_equal(load_all(other)[0], want)
    noisy = tmp_path / "eta1"
    assert sample(noisy, *args[:-4], "--sampler", "ddim", "--eta", "1", "--steps", "5") == 0
    assert not np.array_equal(load_all(noisy)[0], want)
