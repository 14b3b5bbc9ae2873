"""`ddpm-bench nll` and `gap` end to end: output files, resume, and bad input (exit 2, nothing complete)."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpm_bench.cli import main
from tests.plugins import ORACLE_IMAGE
from tests.stderr import without_schedule_warning

PLUGIN = "tests/plugins.py:tiny_conv_T20"
SPEC_KEYS = {"total_bpd", "total_bpd_stderr", "prior_bpd", "kl_bpd", "decoder_bpd", "rate_bpd", "n_images", "dims",
             "T", "data", "seed", "draws", "clip", "decoder_cdf", "mean_type", "var_type", "precision", "model",
             "ddpm_bench_version", "seconds", "network_evals"}


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    return path


def nll(*args):
    return main(["nll", "--model", PLUGIN, "--T", "20", "--no-progress", *map(str, args)])


def test_nll_writes_every_spec_file(npz, tmp_path, capsys):
    out = tmp_path / "out"
    assert nll("--data", npz, "--out", out, "--batch-size", 16, "--shard-size", 4) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert SPEC_KEYS <= set(summary)
    assert summary["n_images"] == 6 and summary["dims"] == 192 and summary["T"] == 20
    assert summary["network_evals"] == 6 * 20 and summary["model"]["callable"] == PLUGIN
    with np.load(out / "per_image.npz") as f:
        terms, index = f["terms"], f["index"]
    assert terms.dtype == np.float64 and terms.shape == (6, 21) and index.dtype == np.int64
    assert list(index) == list(range(6))
    totals = terms.sum(1)
    assert summary["total_bpd"] == pytest.approx(totals.mean(), rel=1e-12)
    assert summary["total_bpd_stderr"] == pytest.approx(totals.std(ddof=1) / np.sqrt(6), rel=1e-12)
    assert summary["total_bpd"] == pytest.approx(summary["decoder_bpd"] + summary["rate_bpd"], rel=1e-12)
    assert summary["rate_bpd"] == pytest.approx(summary["kl_bpd"] + summary["prior_bpd"], rel=1e-12)
    rows = list(csv.DictReader(open(out / "terms.csv")))
    assert [int(r["term"]) for r in rows] == list(range(21)) and rows[-1]["mse_mean"] == ""
    assert float(rows[0]["bpd_mean"]) == pytest.approx(terms[:, 0].mean(), rel=1e-15)
    assert "total bound" in capsys.readouterr().out


def test_resume_recomputes_only_missing_shards_and_gives_the_same_result(npz, tmp_path):
    out = tmp_path / "out"
    assert nll("--data", npz, "--out", out, "--shard-size", 2) == 0
    first = np.load(out / "per_image.npz")["terms"]
    (out / "summary.json").unlink()  # as if killed before the end, with shard 1 missing
    (out / "shards" / "nll_000001.npz").unlink()
    mtime = (out / "shards" / "nll_000000.npz").stat().st_mtime_ns
    assert nll("--data", npz, "--out", out, "--shard-size", 2, "--batch-size", 7) == 0
    assert (out / "shards" / "nll_000000.npz").stat().st_mtime_ns == mtime
    np.testing.assert_allclose(np.load(out / "per_image.npz")["terms"], first, rtol=1e-6)


def test_existing_out_with_other_settings_is_refused_without_force(npz, tmp_path, capsys):
    out = tmp_path / "out"
    assert nll("--data", npz, "--out", out, "--num-images", 2) == 0
    assert nll("--data", npz, "--out", out, "--num-images", 2, "--seed", 1) == 2
    assert "seed" in capsys.readouterr().err
    assert nll("--data", npz, "--out", out, "--num-images", 2, "--seed", 1, "--force") == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    assert nll("--data", npz, "--out", tmp_path / "other") == 2
    assert (tmp_path / "other" / "x.txt").read_text() == "mine"


@pytest.mark.parametrize("case,needle", [
    ("float", "uint8"), ("shape", "shape"), ("channels", "C in"), ("missing", "no such file"), ("too-many", "--num-images"),
])
def test_bad_data_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, case, needle):
    path = tmp_path / "bad.npz"
    arrays = {"float": np.random.rand(2, 8, 8, 3), "shape": np.zeros((2, 8, 8), np.uint8),
              "channels": np.zeros((2, 8, 8, 2), np.uint8)}
    if case in arrays:
        np.savez(path, arrays[case])
    elif case == "too-many":
        np.savez(path, np.zeros((2, 8, 8, 3), np.uint8))
    extra = ["--num-images", "5"] if case == "too-many" else []
    out = tmp_path / "out"
    assert nll("--data", path, "--out", out, *extra) == 2
    err = without_schedule_warning(capsys.readouterr().err).strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("plugin,needle", [("nan_model", "NaN/Inf for term(s) 7"), ("wrong_shape_model", "expected")])
def test_bad_model_output_exits_2_naming_the_problem(npz, tmp_path, capsys, plugin, needle):
    out = tmp_path / "out"
    code = main(["nll", "--model", f"tests/plugins.py:{plugin}", "--T", "20", "--data", str(npz), "--out", str(out),
                 "--no-progress"])
    assert code == 2 and needle in capsys.readouterr().err
    assert not (out / "summary.json").exists() and not list((out / "shards").glob("*.npz"))


@pytest.mark.parametrize("content,needle", [(b"PK\x03\x04 truncated", "truncated or corrupt"), (None, "a bare state_dict (1 tensors")])
def test_bad_checkpoints_exit_2(npz, tmp_path, capsys, content, needle):
    ckpt = tmp_path / "model.pt"
    if content is None:
        torch.save({"weights": torch.zeros(3)}, ckpt)
    else:
        ckpt.write_bytes(content)
    assert main(["nll", "--ckpt", str(ckpt), "--data", str(npz), "--out", str(tmp_path / "o")]) == 2
    assert needle in capsys.readouterr().err


def test_model_source_must_be_exactly_one(npz, tmp_path, capsys):
    assert main(["nll", "--data", str(npz), "--out", str(tmp_path / "o")]) == 2
    assert "exactly one" in capsys.readouterr().err


def test_dry_run_prints_evaluations_and_writes_nothing(npz, tmp_path, capsys):
    out = tmp_path / "out"
    assert nll("--data", npz, "--out", out, "--dry-run") == 0
    text = capsys.readouterr().out
    assert "120 network evaluations" in text and not out.exists()
    assert "--terms 19 (pilot included) would be 200 network evaluations" in text  # 6 x 20 + 4 x 20
    assert nll("--data", npz, "--out", out, "--dry-run", "--terms", 5) == 0
    text = capsys.readouterr().out
    assert "6 images x (1 + 5 drawn) terms + a pilot of 4 images x 20 terms = 116 network evaluations" in text
    assert "the exact bound (without --terms) would be 120" in text and not out.exists()


def test_gap_reports_interval_and_fails_beyond_max_gap(tmp_path, capsys):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    test = np.clip(train.astype(int) + rng.integers(-60, 60, train.shape), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "train.npz", train)
    np.savez(tmp_path / "test.npz", test)
    assert nll("--data", tmp_path / "train.npz", "--out", tmp_path / "tr") == 0
    assert nll("--data", tmp_path / "test.npz", "--out", tmp_path / "te") == 0
    capsys.readouterr()
    code = main(["gap", str(tmp_path / "tr"), str(tmp_path / "te"), "--max-gap", "100"])
    result = json.loads(capsys.readouterr().out)
    tr = np.load(tmp_path / "tr" / "per_image.npz")["terms"].sum(1)
    te = np.load(tmp_path / "te" / "per_image.npz")["terms"].sum(1)
    assert code == 0 and result["gap_bpd"] == pytest.approx(te.mean() - tr.mean(), rel=1e-12)
    se = np.sqrt(tr.var(ddof=1) / 6 + te.var(ddof=1) / 6)
    assert result["ci95"][1] - result["gap_bpd"] == pytest.approx(1.959963984540054 * se, rel=1e-9)
    capsys.readouterr()
    assert main(["gap", str(tmp_path / "tr"), str(tmp_path / "te"), "--max-gap", str(result["ci95"][0] - 1)]) == 1
    err = capsys.readouterr().err  # exit 1 says it, stderr says why, on one line
    assert err.count("\n") == 1 and "overfits:" in err and "lies above max_gap" in err


def test_console_entry_exits_2_on_bad_input(tmp_path):
    """The real process: one line on stderr, exit status 2."""
    np.savez(tmp_path / "x.npz", ORACLE_IMAGE.astype(np.float32))
    p = subprocess.run([sys.executable, "-m", "ddpm_bench", "nll", "--model", PLUGIN, "--T", "20", "--data",
                        str(tmp_path / "x.npz"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    err = without_schedule_warning(p.stderr)
    assert p.returncode == 2 and err.count("\n") == 1 and "float32" in err


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A real ddpm-bench checkpoint of a small U-Net (untrained) with T = 20."""
    from ddpm_bench.checkpoint import save_checkpoint
    from ddpm_bench.config import config_from_dict
    from ddpm_bench.models.registry import build_model

    cfg = config_from_dict({"model": {"image_size": 8, "ch": 32, "ch_mult": [1], "num_res_blocks": 1,
                                      "attn_resolutions": [], "dropout": 0.0},
                            "diffusion": {"T": 20, "var_type": "fixed-small"}}, "test").to_dict()
    torch.manual_seed(0)
    state = build_model(cfg["model"]).state_dict()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"config": cfg, "model": state, "ema": state, "optimizer": {}, "step": 0})
    return path


def test_nll_from_a_checkpoint_records_its_hash_and_settings(npz, tmp_path, tiny_ckpt):
    from ddpm_bench.provenance import sha256_file

    out = tmp_path / "out"
    assert main(["nll", "--ckpt", str(tiny_ckpt), "--data", str(npz), "--num-images", "2", "--out", str(out),
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["sha256"] == sha256_file(tiny_ckpt) and summary["model"]["weights"] == "ema"
    assert summary["T"] == 20 and summary["var_type"] == "fixed-small"


@pytest.mark.parametrize("flags,needle", [(["--T", "1000"], "--T 1000 contradicts"),
                                          (["--var-type", "fixed-large"], "--var-type fixed-large contradicts")])
def test_a_flag_that_contradicts_the_checkpoint_exits_2(npz, tmp_path, tiny_ckpt, capsys, flags, needle):
    assert main(["nll", "--ckpt", str(tiny_ckpt), "--data", str(npz), "--out", str(tmp_path / "o"), *flags]) == 2
    assert needle in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_images_of_another_size_than_the_checkpoint_exit_2(tmp_path, tiny_ckpt, capsys):
    np.savez(tmp_path / "big.npz", np.zeros((2, 16, 16, 3), np.uint8))
    assert main(["nll", "--ckpt", str(tiny_ckpt), "--data", str(tmp_path / "big.npz"), "--out", str(tmp_path / "o")]) == 2
    assert "the model expects" in capsys.readouterr().err


def _terms(out):
    with np.load(out / "per_image.npz") as f:
        return f["terms"]


def test_channels_last_changes_only_rounding_and_is_recorded(npz, tmp_path):
    a, b, c = tmp_path / "plain", tmp_path / "cl", tmp_path / "default"
    assert nll("--data", npz, "--out", a, "--no-channels-last") == 0
    assert nll("--data", npz, "--out", b, "--channels-last") == 0
    assert nll("--data", npz, "--out", c) == 0
    np.testing.assert_allclose(_terms(b), _terms(a), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(_terms(c), _terms(b))  # on a CPU a torch module runs channels-last by default
    execution = [json.loads((o / "summary.json").read_text())["network_execution"] for o in (a, b, c)]
    assert execution[0] == {"device": "cpu", "precision": "fp32", "channels_last": False, "channels_last_from": "flag",
                            "compile": None, "cuda_graphs": False}
    assert execution[1] == {**execution[0], "channels_last": True}
    assert execution[2] == {**execution[1], "channels_last_from": "default for cpu"}


def test_a_plugin_that_cannot_take_channels_last_runs_contiguous_by_default(tmp_path):
    np.savez(tmp_path / "x.npz", np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    for name, expected in (("viewing_module", False), ("tiny_conv", True), ("zero_eps", False)):
        out = tmp_path / name
        assert main(["nll", "--model", f"tests/plugins.py:{name}", "--T", "4", "--data", str(tmp_path / "x.npz"),
                     "--no-progress", "--out", str(out)]) == 0
        assert json.loads((out / "summary.json").read_text())["network_execution"]["channels_last"] is expected


@pytest.mark.slow
def test_compiled_network_changes_only_rounding(npz, tmp_path):
    a, b = tmp_path / "eager", tmp_path / "compiled"
    assert nll("--data", npz, "--out", a) == 0
    assert nll("--data", npz, "--out", b, "--compile") == 0
    np.testing.assert_allclose(_terms(b), _terms(a), rtol=1e-6, atol=1e-9)
    assert json.loads((b / "summary.json").read_text())["network_execution"]["compile"] == "default"
