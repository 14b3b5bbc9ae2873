"""Rate and distortion (paper §4.3, Table 4, Figure 5; SPEC §1) and the `rate-distortion` command."""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pandas as pd
import pytest

from ddpm_bench.cli import main
from ddpm_bench.rate_distortion_curve import (
    distortion_bpd,
    rate_bpd,
    rate_distortion_curve,
    rmse,
    rmse_per_image,
    table4_reverse_times,
    table4_rows,
)
from ddpm_bench.reporting import columns as C
from ddpm_bench.reporting.paper import paper_values
from tests.synthetic_outputs import per_image_arrays, record_again, write_nll_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PDF_MAGIC = b"%PDF-"


# -- pure functions ----------------------------------------------------------------------------------------

def test_rate_closed_form_unit_terms():
    # every L_k = 1 bit/dim: rate(t) = L_T + L_t + ... + L_{T-1} = T - t + 1, the reverse time itself
    T = 7
    curve = rate_distortion_curve(np.ones((3, T + 1)), None)
    np.testing.assert_array_equal(curve.t, np.arange(T, 0, -1))
    np.testing.assert_array_equal(curve.reverse_time, np.arange(1, T + 1))
    np.testing.assert_array_equal(curve.rate_bpd, curve.reverse_time.astype(float))
    assert np.all(np.isnan(curve.rmse))


def test_rate_endpoints_and_monotone():
    terms, mse = per_image_arrays(n=9, T=30, seed=3)
    rate = rate_bpd(terms)  # index t - 1
    # t = 1: L_1 + ... + L_T, per image, then the mean over images (the nll summary's rate_bpd)
    assert rate[0] == pytest.approx(terms[:, 1:].sum(axis=1).mean(), rel=1e-13)
    assert rate[-1] == pytest.approx(terms[:, -1].mean(), rel=1e-13)  # t = T: the prior term L_T alone
    for t in (1, 5, 17, 30):
        direct = np.mean(terms[:, -1] + terms[:, t:30].sum(axis=1))
        assert rate[t - 1] == pytest.approx(direct, rel=1e-12)
    curve = rate_distortion_curve(terms, mse)
    assert np.all(np.diff(curve.rate_bpd) > 0)  # positive terms: rate grows with reverse time
    assert distortion_bpd(terms) == pytest.approx(terms[:, 0].mean(), rel=1e-15)


def test_rmse_formulas_against_numpy():
    terms, mse = per_image_arrays(n=5, T=12, seed=4)
    for t in (1, 6, 12):
        col = mse[:, t - 1]
        assert rmse(mse)[t - 1] == pytest.approx(127.5 * np.sqrt(np.mean(col)), rel=1e-14)
        assert rmse_per_image(mse)[t - 1] == pytest.approx(np.mean([127.5 * np.sqrt(v) for v in col]), rel=1e-14)
    # the mean of per-image RMSEs never exceeds the RMSE of the pooled errors (Jensen)
    assert np.all(rmse_per_image(mse) <= rmse(mse) + 1e-12)
    curve = rate_distortion_curve(terms, mse)
    assert curve.rmse[curve.t == 1][0] == pytest.approx(127.5 * np.sqrt(mse[:, 0].mean()), rel=1e-14)


def test_mse_shape_must_match_terms():
    terms, mse = per_image_arrays(n=4, T=10)
    with pytest.raises(ValueError, match="mse must be"):
        rate_distortion_curve(terms, mse[:, :-1])
    with pytest.raises(ValueError, match="terms must be"):
        rate_distortion_curve(terms[:, :1], None)


def test_table4_reverse_times():
    np.testing.assert_array_equal(table4_reverse_times(1000), np.arange(1000, 0, -100))
    np.testing.assert_array_equal(table4_reverse_times(20), [20, 18, 16, 14, 12, 10, 8, 6, 4, 2])
    np.testing.assert_array_equal(table4_reverse_times(4), [4, 3, 2, 1])  # rounded half up, duplicates dropped
    terms, mse = per_image_arrays(n=3, T=20)
    rows = table4_rows(rate_distortion_curve(terms, mse))
    np.testing.assert_array_equal(rows.t, 20 - rows.reverse_time + 1)  # s = T is t = 1
    assert rows.rate_bpd[0] == pytest.approx(terms[:, 1:].sum(axis=1).mean(), rel=1e-13)


# -- the command ---------------------------------------------------------------------------------------------

def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_command_outputs_T20(tmp_path, capsys):
    nll = write_nll_dir(tmp_path / "nll", n=6, T=20)
    out = tmp_path / "rd"
    code, _, err = _run(["rate-distortion", str(nll), "--out", str(out)], capsys)
    assert code == 0, err
    summary_nll = json.loads((nll / "summary.json").read_text())
    curve = pd.read_csv(out / "curve.csv")
    assert list(curve.columns) == list(C.CURVE_COLUMNS)
    assert len(curve) == 20 and list(curve[C.T]) == list(range(20, 0, -1))
    at_T = curve[curve[C.REVERSE_TIME] == 20].iloc[0]
    assert at_T[C.RATE_BPD] == pytest.approx(summary_nll["rate_bpd"], rel=1e-12)
    table4 = pd.read_csv(out / "table4.csv", keep_default_na=False)
    assert list(table4.columns)[:5] == [C.REVERSE_TIME, C.RATE_BPD, C.RMSE, C.PAPER_RATE_BPD, C.PAPER_RMSE]
    assert list(table4[C.REVERSE_TIME]) == [20, 18, 16, 14, 12, 10, 8, 6, 4, 2]
    assert set(table4[C.PAPER_RATE_BPD]) == {""} and set(table4[C.PAPER_RMSE]) == {""}  # T != 1000: blank
    md = (out / "table4.md").read_text()
    assert "nan" not in md.lower()
    assert [c.strip() for c in md.splitlines()[0].strip("|").split("|")][:3] == [C.REVERSE_TIME, C.RATE_BPD, C.RMSE]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["identity"] == summary_nll["model"]["identity"]
    assert summary["nll_run_id"] == summary_nll["run_id"]
    assert summary["data"] == "embedded:test" and summary["seed"] == 0 and summary["T"] == 20
    assert summary["rate_bpd"] == pytest.approx(summary_nll["rate_bpd"], rel=1e-12)
    assert summary["distortion_bpd"] == pytest.approx(summary_nll["decoder_bpd"], rel=1e-12)
    assert summary["paper"] is None and summary["warnings"] == []
    for name, magic in (("figure5.png", PNG_MAGIC), ("figure5.pdf", PDF_MAGIC)):
        data = (out / name).read_bytes()
        assert data.startswith(magic) and len(data) > 10_000, name
    # the same command again resumes (rewrites the same results); another NLL_DIR into it is refused
    assert _run(["rate-distortion", str(nll), "--out", str(out)], capsys)[0] == 0
    other = write_nll_dir(tmp_path / "nll2", n=6, T=20, seed=5)
    code, _, err = _run(["rate-distortion", str(other), "--out", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--force" in err
    assert _run(["rate-distortion", str(other), "--out", str(out), "--force"], capsys)[0] == 0


def test_command_paper_columns_T1000(tmp_path, capsys):
    nll = write_nll_dir(tmp_path / "nll", n=3, T=1000)
    out = tmp_path / "rd"
    code, _, err = _run(["rate-distortion", str(nll), "--out", str(out)], capsys)
    assert code == 0, err
    table4 = pd.read_csv(out / "table4.csv")
    paper = paper_values()["table4_rate_distortion"]["rows"]
    assert list(table4[C.REVERSE_TIME]) == [r[0] for r in paper]
    np.testing.assert_array_equal(table4[C.PAPER_RATE_BPD].to_numpy(), [r[1] for r in paper])
    np.testing.assert_array_equal(table4[C.PAPER_RMSE].to_numpy(), [r[2] for r in paper])
    # 3 embedded images are not the paper's protocol: the paper's columns for context, no deltas (as `report`)
    assert table4[C.DELTA_RATE_BPD].isna().all() and table4[C.DELTA_RMSE].isna().all()
    assert "1.77581" in (out / "table4.md").read_text()
    assert json.loads((out / "summary.json").read_text())["paper"]["rate_bpd"] == 1.78


@pytest.mark.parametrize("damage, message", [
    ("no_per_image", "per_image.npz: missing"),
    ("mse_shape", "field 'mse' must be float64 (4, 10)"),
    ("terms_T", "says n_images = 4, T = 10"),
    ("other_run", "field 'run_id' is not that of summary.json"),
    ("no_summary", "summary.json: missing"),
    ("not_a_dir", "not a directory"),
])
def test_bad_nll_dir_exit_2(tmp_path, capsys, damage, message):
    nll = write_nll_dir(tmp_path / "nll", n=4, T=10)
    z = dict(np.load(nll / "per_image.npz"))
    if damage == "no_per_image":
        (nll / "per_image.npz").unlink()
    elif damage == "mse_shape":
        np.savez(nll / "per_image.npz", **{**z, "mse": z["mse"][:, :-2]})
    elif damage == "terms_T":
        np.savez(nll / "per_image.npz", **{**z, "terms": z["terms"][:, :-1], "mse": z["mse"][:, :-1],
                                          "drawn": z["drawn"][:, :-1]})
    elif damage == "other_run":
        np.savez(nll / "per_image.npz", **{**z, "run_id": np.array("cd" * 32)})
    elif damage == "no_summary":
        (nll / "summary.json").unlink()
    elif damage == "not_a_dir":
        shutil.rmtree(nll)
    if damage in ("mse_shape", "terms_T", "other_run"):  # written so: the checks behind the content check
        record_again(nll, "per_image.npz")
    code, _, err = _run(["rate-distortion", str(nll), "--out", str(tmp_path / "rd")], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "rd").exists()  # bad input is refused before --out is touched


def test_nll_dir_or_model_exactly_one(tmp_path, capsys):
    nll = write_nll_dir(tmp_path / "nll", n=2, T=5)
    code, _, err = _run(["rate-distortion", "--out", str(tmp_path / "rd")], capsys)
    assert code == 2 and "NLL_DIR" in err
    code, _, err = _run(["rate-distortion", str(nll), "--model", "m:f", "--data", "x.npz", "--out", str(tmp_path / "rd")],
                        capsys)
    assert code == 2 and "not both" in err
    code, _, err = _run(["rate-distortion", "--model", "m:f", "--out", str(tmp_path / "rd")], capsys)
    assert code == 2 and "--data" in err


def test_model_flags_run_the_bound_first(tmp_path, capsys):
    """Integration with the bound engine: `rate-distortion --model ... --data ...` bounds into OUT/nll first.

    TODO(lead): ddpm_bench.jobs.nll.run_nll is not in the `report` branch; this test skips until it is
    merged, and then must pass unchanged (it checks the nll output against the curve it produced).
    """
    pytest.importorskip("ddpm_bench.jobs.nll", reason="TODO(lead): run_nll not merged into this branch yet")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8))
    (tmp_path / "zero_model.py").write_text(textwrap.dedent("""
        import torch
        def build():
            return lambda x, t: torch.zeros_like(x)
    """))
    out = tmp_path / "rd"
    code, _, err = _run(["rate-distortion", "--model", f"{tmp_path / 'zero_model.py'}:build", "--T", "10",
                         "--data", str(tmp_path / "data.npz"), "--no-progress", "--out", str(out)], capsys)
    assert code == 0, err
    nll_summary = json.loads((out / "nll" / "summary.json").read_text())
    curve = pd.read_csv(out / "curve.csv")
    assert len(curve) == 10
    assert curve[C.RATE_BPD].iloc[-1] == pytest.approx(nll_summary["rate_bpd"], rel=1e-9)
    assert np.all(np.isfinite(curve[C.RMSE]))
