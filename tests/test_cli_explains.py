"""The command line explains itself: what each command did, its help, its errors, and the papercuts found
when it was tried as a new user would (issue 12)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from ddpm_bench.cli import build_parser, main
from tests.test_train import TINY, train

PLUGIN = "tests/plugins.py:tiny_conv_T20"


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    return path


def test_sample_says_how_many_and_where_the_grid_is(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--model", PLUGIN, "--T", "20", "--image-size", "8", "--num", "5", "--no-progress",
                 "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith("sample: 5 of 5 samples (20 steps, seed 0") and f"grid: {out / 'grid.png'}" in said
    assert Image.open(out / "grid.png").size[0] >= 256  # 8 columns of 8x8 images, enlarged nearest-neighbour


def test_rate_distortion_prints_table4_and_draws_where_the_bits_go(tmp_path, npz, capsys):
    assert main(["nll", "--model", PLUGIN, "--T", "20", "--data", str(npz), "--no-progress",
                 "--out", str(tmp_path / "n")]) == 0
    capsys.readouterr()
    assert main(["rate-distortion", str(tmp_path / "n"), "--out", str(tmp_path / "rd")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("rate-distortion: ") and "Table 4" in lines[0]
    rows = [ln.split() for ln in lines[2:-1]]
    assert [int(r[0]) for r in rows] == [20, 18, 16, 14, 12, 10, 8, 6, 4, 2]  # reverse times T, 0.9T, ...
    table = json.loads((tmp_path / "rd" / "summary.json").read_text())
    assert float(rows[0][1]) == pytest.approx(table["rate_bpd"], abs=5e-4)
    for ext in ("png", "pdf"):
        assert (tmp_path / "rd" / f"bits_by_t.{ext}").stat().st_size > 5_000


def test_report_prints_its_path_and_table1(tmp_path, npz, capsys):
    assert main(["nll", "--model", PLUGIN, "--T", "20", "--data", str(npz), "--no-progress",
                 "--out", str(tmp_path / "n")]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "n"), "--out", str(tmp_path / "r")]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"report: {tmp_path / 'r' / 'report.md'}") and "| Model" in said
    assert "Ours (L_simple)" in said and "not comparable" in said
    assert (tmp_path / "r" / "bits_by_t.png").is_file()


def test_help_shows_defaults_once_and_never_none():
    parser = build_parser()
    for name, sub in parser.commands.items():
        text = sub.format_help()
        assert "(default: None)" not in text and "%%" not in text, name
        flat = re.sub(r"\s+", " ", text)
        assert not re.search(r"\(default[^()]*\) \(default:", flat), name  # stated twice
    assert "parse and dispatch" not in parser.format_help()  # no developer text


def test_a_mistyped_flag_names_its_command(capsys):
    argv = ["sample", "--model", PLUGIN, "--num", "3", "--seeed", "1", "--out", "x"]
    assert pytest.raises(SystemExit, main, argv).value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ddpm-bench sample: error: unknown flag --seeed") and err.count("\n") == 1


def test_inspect_refuses_set_with_a_checkpoint(tmp_path, capsys):
    assert main(["inspect", "--ckpt", str(tmp_path / "c.pt"), "--set", "training.steps=3"]) == 2
    assert "--set changes a recipe" in capsys.readouterr().err


def test_train_resumes_from_its_run_directory_alone_and_takes_data_root(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data.npz"
    np.savez(data, np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8))
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY.format(data=data))
    run = tmp_path / "run"
    assert train(recipe, run, "training.steps=3", "training.log_every=1") == 0
    # the run's own config.json is the recipe; training.steps may change on resume
    assert main(["train", "--out", str(run), "--set", "training.steps=6", "--no-progress", "--device", "cpu",
                 "--data-root", str(tmp_path)]) == 0
    assert "resuming" in capsys.readouterr().err
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "ckpt_0000006.pt"
    assert json.loads((run / "config.json").read_text())["training"]["data_root"] == str(tmp_path)
    assert main(["train", "--out", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "holds no training run" in capsys.readouterr().err
    # --ckpt RUN_DIR evaluates the run's latest checkpoint
    assert main(["inspect", "--ckpt", str(run)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["step"] == 6 and "latest checkpoint" in captured.err


def test_a_plugin_can_import_the_modules_beside_it(tmp_path, npz):
    (tmp_path / "helper_mod_xyz.py").write_text("import torch\ndef zeros(x):\n    return torch.zeros_like(x)\n")
    (tmp_path / "plug.py").write_text("import helper_mod_xyz\n\ndef make():\n    return lambda x, t: "
                                      "helper_mod_xyz.zeros(x)\n")
    assert main(["nll", "--model", f"{tmp_path / 'plug.py'}:make", "--T", "5", "--data", str(npz),
                 "--no-progress", "--out", str(tmp_path / "o")]) == 0


def test_a_dry_run_probe_stops_once_its_time_budget_is_spent():
    import torch

    from ddpm_bench.probe import timed

    calls = []
    assert timed(lambda: calls.append(1), torch.device("cpu")) >= 0 and len(calls) == 4  # warm-up + 3
    calls.clear()
    timed(lambda: (calls.append(1), __import__("time").sleep(0.05)), torch.device("cpu"), budget_s=0.01)
    assert len(calls) == 2  # the warm-up and one timed call: a slow network is probed twice, not four times


def test_a_schedule_that_never_reaches_noise_is_warned_about_with_its_numbers(tmp_path, npz, capsys):
    from ddpm_bench.diffusion import DiffusionConfig
    from ddpm_bench.schedule import prior_warning

    assert prior_warning(DiffusionConfig(T=1000).schedule()) is None  # the paper's: L_T ~ 1e-5 bits/dim
    assert "alpha-bar_T = 0.603" in prior_warning(DiffusionConfig(T=50).schedule())
    for argv in (["nll", "--data", str(npz)], ["sample", "--num", "2", "--image-size", "8"]):
        assert main([argv[0], "--model", "tests/plugins.py:tiny_conv", "--T", "50", *argv[1:], "--no-progress",
                     "--out", str(tmp_path / argv[0])]) == 0
        err = capsys.readouterr().err
        assert f"ddpm-bench {argv[0]}: warning: the schedule does not reach noise: alpha-bar_T = 0.603" in err
        assert "L_T is about 0.376 bits/dim" in err


def test_attention_at_no_resolution_of_the_model_is_an_error(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(TINY.format(data=tmp_path / "d.npz").replace("attn_resolutions = [4]", "attn_resolutions = [3]"))
    assert main(["inspect", "--recipe", str(recipe)]) == 2
    assert "model.attn_resolutions [3]: the model's resolutions are [8, 4]" in capsys.readouterr().err
