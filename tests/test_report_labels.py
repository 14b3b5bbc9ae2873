"""The report never puts a number in a column that it is not: another extractor's scores are no FID/IS,
the ODE likelihood is described as the estimate it is, counts are the run's own; a finished report leaves
no lock; the reproduce headline prints the FID's digits that reproduce."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import ddpm_bench
from ddpm_bench.cli import main
from ddpm_bench.jobs.reproduce import headline
from ddpm_bench.outputs import FidMetrics
from tests.synthetic_outputs import write_run_dir


@pytest.fixture
def run_with_tiny_test_fid(tmp_path):
    """A run whose fid/ holds a real `fid` output of the tiny test network's features (16 samples)."""
    run = write_run_dir(tmp_path / "run", data="embedded:train", fid=False)
    images = tmp_path / "s.npz"
    np.savez(images, np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8))
    assert main(["fid", "--samples", str(images), "--ref", str(images), "--feature-extractor", "tiny-test",
                 "--allow-few-samples", "--no-prc", "--cache-dir", str(tmp_path / "c"), "--no-progress",
                 "--out", str(run / "fid")]) == 0
    return run


def test_another_extractors_scores_never_stand_in_a_fid_or_is_column(run_with_tiny_test_fid, tmp_path, capsys):
    run = run_with_tiny_test_fid
    m = FidMetrics.read(run / "fid")
    assert not m.scores_are_fid_is and m.label.startswith("Frechet distance of tiny-test features")
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 0
    row = pd.read_csv(tmp_path / "r" / "table1.csv").query("origin == 'measured'").iloc[0]
    assert math.isnan(row["FID"]) and math.isnan(row["IS"])
    md = (tmp_path / "r" / "table1.md").read_text().replace("\n  ", " ")
    assert f"FID and IS are empty: metrics.json holds the Frechet distance {m.fid:.2f}" in md
    cells = json.loads((tmp_path / "r" / "table1.sources.json").read_text())["cells"]
    assert not [c for c in cells if c["column"] in ("FID", "IS", "IS_std")]
    lines, _ = headline(run)
    assert any(line.startswith("Frechet distance of tiny-test features (not FID)") for line in lines)
    assert not any(line.startswith("FID ") for line in lines)


def test_the_headline_prints_the_fids_reproducible_digits(tmp_path):
    run = write_run_dir(tmp_path / "run", data="embedded:train", fid_value=197.0826)
    lines, _ = headline(run)
    assert "FID 197.1 (100 samples against embedded:train), not comparable to the paper's" in lines


def test_the_ode_likelihood_is_described_as_an_estimate_not_exact(tmp_path):
    data = tmp_path / "x.npz"
    np.savez(data, np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8))
    assert main(["nll", "--model", "tests/plugins.py:gaussian_oracle_T100", "--T", "100", "--data", str(data),
                 "--ode", "--no-progress", "--out", str(tmp_path / "ode")]) == 0
    assert main(["report", str(tmp_path / "ode"), "--out", str(tmp_path / "r")]) == 0
    text = " ".join((tmp_path / "r" / name).read_text().replace("\n  ", " ") for name in ("report.md", "table1.md"))
    assert "exact, not a bound" not in text
    assert "an estimate, by probe and solver, of the dequantized density" in text


def test_counts_are_the_runs_own_and_a_finished_report_leaves_no_lock(tmp_path):
    run = write_run_dir(tmp_path / "run", data="embedded:train", sample_pngs=True)
    result = ddpm_bench.report(run, tmp_path / "r")
    assert not (tmp_path / "r" / ".lock").exists() and result.index.is_file()
    text = (tmp_path / "r" / "report.md").read_text()
    manifest = json.loads((run / "samples" / "manifest.json").read_text())
    assert f"the first {min(64, manifest['count'])}," in text and "the first 64," not in text.replace(
        f"the first {min(64, manifest['count'])},", "")


def test_a_folder_where_gap_json_should_be_is_named(tmp_path, capsys):
    run = write_run_dir(tmp_path / "run", data="embedded:train")
    (run / "gap.json").unlink()
    (run / "gap.json").mkdir()
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 2
    assert "gap.json: a folder, where gap's file gap.json should be" in capsys.readouterr().err


def test_errors_to_a_python_caller_name_its_own_arguments(tmp_path):
    from tests.synthetic_outputs import write_nll_dir

    write_nll_dir(tmp_path / "train", data="embedded:train", seed=1)
    write_nll_dir(tmp_path / "test", data="embedded:test", seed=2)
    with pytest.raises(ddpm_bench.UserError, match=r"^train='.*test' holds the bound of embedded:test, a test split; "
                                                   "give the train split's output first"):
        ddpm_bench.gap(tmp_path / "test", tmp_path / "train")
    est = tmp_path / "est"
    write_nll_dir(est, data="embedded:test", terms_per_image=3)
    with pytest.raises(ddpm_bench.UserError, match=r"compute it with bound\(\.\.\.\) without terms= or options="):
        ddpm_bench.rate_distortion(est)
