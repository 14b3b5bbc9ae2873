"""What a researcher sees on the command line: one answer per question, gap compares what can be compared,
no traps in the flags, quiet success, and provenance of what was not checked."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from ddpm_bench.cli import main
from tests.stderr import without_schedule_warning

TINY = "tests/plugins.py:tiny_conv_T20"


def nll(data, out, *extra) -> int:
    return main(["nll", "--model", TINY, "--T", "20", "--data", str(data), "--no-progress", "--out", str(out),
                 *map(str, extra)])


def images(path: Path, seed: int, n: int = 4) -> Path:
    np.savez(path, np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))
    return path


def error(capsys) -> str:
    lines = without_schedule_warning(capsys.readouterr().err).strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- flags without traps ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,flag", [
    (["nll", "--model", TINY, "--T", "20", "--data", "x.npz", "--num-image", "2", "--out", "o"], "--num-image"),
    (["sample", "--model", TINY, "--num", "2", "--step", "5", "--out", "o"], "--step"),
    (["fid", "--sample", "s", "--out", "o"], "--sample"),
])
def test_an_abbreviated_flag_is_an_unknown_flag(capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    line = error(capsys)
    assert f"unknown flag {flag}" in line or f"required: {'--samples'}" in line


def test_every_missing_required_flag_is_named_at_once(capsys):
    with pytest.raises(SystemExit) as e:
        main(["nll", "--model", TINY])
    assert e.value.code == 2 and "--data, --out" in error(capsys)


def test_data_help_lists_every_kind_of_source(capsys):
    with pytest.raises(SystemExit):
        main(["nll", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for kind in ("embedded:train|test", "cifar10:train|test", "PATH.npz", "a folder of PNG files", "a sample directory"):
        assert kind in text
    assert "--data DATA" in text and "[--data DATA]" not in text  # shown as required


def test_inspect_takes_a_diffusers_directory(tmp_path, capsys):
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    unet.save_pretrained(tmp_path / "m" / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=10).save_pretrained(tmp_path / "m" / "scheduler")
    capsys.readouterr()
    assert main(["inspect", "--ckpt", str(tmp_path / "m")]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert info["kind"] == "diffusers" and info["params"] > 0 and info["diffusion"]["T"] == 10
    assert "accelerate" not in captured.err  # quiet success: diffusers' notice is not shown


def test_a_finished_run_rerun_prints_its_numbers(tmp_path, capsys):
    data = images(tmp_path / "d.npz", 0)
    assert nll(data, tmp_path / "o") == 0
    first = capsys.readouterr().out
    assert nll(data, tmp_path / "o") == 0
    again = capsys.readouterr().out
    assert "was already complete" in again
    number = [line for line in first.splitlines() if "total bound" in line][0]
    assert number in again


def test_inputs_are_checked_before_the_feature_extractor(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDPM_BENCH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))
    assert main(["fid", "--samples", str(tmp_path / "missing"), "--ref", "embedded:test", "--out",
                 str(tmp_path / "f")]) == 2
    assert "missing: no such file or directory" in error(capsys)


def test_reproduce_dry_run_lists_stages_in_the_runs_order(tmp_path, capsys):
    assert main(["reproduce", "recipes/embedded.toml", "--ckpt", "embedded", "--out", str(tmp_path / "r"),
                 "--dry-run", "--device", "cpu", "--set", "evaluation.fid.feature_extractor=\"tiny-test\""]) == 0
    stages = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if line.startswith("  ")]
    order = [s for s in stages if s in ("sample", "nll", "gap", "fid")]
    assert order == ["sample", "nll", "nll", "gap", "gap", "fid"], stages


# -- gap compares what can be compared ----------------------------------------------------------------------------

def test_gap_refuses_a_test_split_given_as_train(tmp_path, capsys):
    assert main(["nll", "--ckpt", "embedded", "--data", "embedded:test", "--num-images", "1", "--terms", "2",
                 "--no-progress", "--out", str(tmp_path / "test")]) == 0
    assert main(["nll", "--ckpt", "embedded", "--data", "embedded:train", "--num-images", "1", "--terms", "2",
                 "--no-progress", "--out", str(tmp_path / "train")]) == 0
    capsys.readouterr()
    assert main(["gap", str(tmp_path / "test"), str(tmp_path / "train")]) == 2
    assert "a test split" in error(capsys)
    assert main(["gap", str(tmp_path / "train"), str(tmp_path / "test")]) in (0, 1)


def test_gap_refuses_two_data_sets_unless_declared_one_distribution(tmp_path, capsys):
    assert main(["nll", "--ckpt", "embedded", "--data", "embedded:train", "--num-images", "2", "--terms", "2",
                 "--no-progress", "--out", str(tmp_path / "train")]) == 0
    other = tmp_path / "other.npz"
    np.savez(other, np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    assert main(["nll", "--ckpt", "embedded", "--data", str(other), "--terms", "2", "--no-progress",
                 "--out", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    assert main(["gap", str(tmp_path / "train"), str(tmp_path / "other")]) == 2
    line = error(capsys)
    assert "two data sets" in line and "--same-distribution" in line
    code = main(["gap", str(tmp_path / "train"), str(tmp_path / "other"), "--same-distribution", "--max-gap", "-100"])
    captured = capsys.readouterr()
    assert code == 1 and "declared one distribution" in captured.err
    assert json.loads(captured.out)["splits"].endswith("declared one distribution (--same-distribution)")


def test_reproduce_exits_1_naming_the_overfitting_beyond_max_gap(tmp_path, capsys):
    from ddpm_bench.jobs.reproduce import headline
    from tests.synthetic_outputs import write_gap, write_nll_dir

    run = tmp_path / "run"
    write_nll_dir(run / "nll_train", data="embedded:train", seed=1)
    write_nll_dir(run / "nll_test", data="embedded:test", seed=2)
    write_gap(run, max_gap=-10.0)  # every interval lies above it
    lines, overfits = headline(run)
    assert overfits and "the model overfits" in lines[-1] and lines[0].startswith("NLL test")


# -- provenance of what was not checked ---------------------------------------------------------------------------

def test_cifar10_files_accepted_without_md5_are_recorded_as_such(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": np.random.default_rng(0).integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [0, 1, 2]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    monkeypatch.setenv("DDPM_BENCH_SKIP_CIFAR_MD5", "1")
    out = tmp_path / "o"
    assert main(["nll", "--ckpt", "embedded", "--data", "cifar10:test", "--data-root", str(tmp_path), "--terms", "2",
                 "--no-progress", "--out", str(out)]) == 0
    notes = json.loads((out / "summary.json").read_text())["data_notes"]
    assert len(notes) == 1 and "without their md5 check" in notes[0]
