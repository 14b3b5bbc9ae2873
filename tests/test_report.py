"""`ddpm-bench report`: Tables 1-4 and Figure 5 from run, nll, fid and rate-distortion directories."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ddpm_bench.jobs.report as report_job
from ddpm_bench.cli import main
from ddpm_bench.estimators import read_output, read_summary
from ddpm_bench.jobs.report import build_report
from ddpm_bench.jobs.reproduce import headline
from ddpm_bench.rate_distortion_curve import rate_distortion_curve
from ddpm_bench.reporting import columns as C
from ddpm_bench.reporting import tables
from ddpm_bench.reporting.figures import bits_by_t_figure
from ddpm_bench.shards import file_sha256
from tests.synthetic_outputs import model_entry, per_image_arrays, write_fid_dir, write_nll_dir, write_run_dir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PDF_MAGIC = b"%PDF-"


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _md_rows(path):
    """Markdown table rows as dicts of stripped cell strings."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in lines[2:]]


@pytest.fixture
def runs(tmp_path):
    a = write_run_dir(tmp_path / "cifar_simple", objective="L_simple", data="cifar10:train", fid_value=4.0,
                      paper_protocol=True)
    b = write_run_dir(tmp_path / "embedded_L", objective="L", data="embedded:train", fid=False)
    nll = write_nll_dir(tmp_path / "plain_nll", data="embedded:test", seed=7)
    fid = write_fid_dir(tmp_path / "plain_fid", fid=9.5, is_mean=None, is_std=None, ref="/data/lsun_bedroom_256.npz")
    return a, b, nll, fid


def test_report_tables_blanks_deltas_and_provenance(tmp_path, runs, capsys):
    a, b, nll, fid = runs
    out = tmp_path / "report"
    assert main(["report", str(a), str(b), str(nll), str(fid), "--out", str(out)]) == 0, capsys.readouterr().err
    for stem in ("table1", "table2", "table3", "table4"):
        for ext in (".csv", ".md", ".sources.json"):
            assert (out / f"{stem}{ext}").is_file(), stem + ext

    # Table 1: paper rows then ours; a run without FID has empty FID/IS cells in CSV and Markdown
    t1 = _csv_rows(out / "table1.csv")
    assert [r[C.MODEL] for r in t1[:16]] == [r[C.MODEL] for r in t1 if r[C.ORIGIN] == "paper"]
    mine = {r[C.MODEL]: r for r in t1 if r[C.ORIGIN] == "measured"}
    row_b = next(r for m, r in mine.items() if "embedded_L" in m)
    assert row_b[C.FID] == "" and row_b[C.IS] == "" and row_b[C.IS_STD] == ""
    assert row_b[C.PAPER_ROW] == "" and row_b[C.DELTA_NLL_TEST] == ""  # not CIFAR-10: no comparison
    md_b = next(r for r in _md_rows(out / "table1.md") if "embedded_L" in r["Model"])
    assert list(md_b) == ["Model", "IS", "FID", "NLL Test (Train)", "vs paper"]  # the paper's columns
    assert md_b["FID"] == "" and md_b["IS"] == "" and md_b["vs paper"] == "not comparable"
    assert row_b[C.COMPARISON] == "not comparable: data embedded:train, not CIFAR-10"
    assert max(len(line) for line in (out / "table1.md").read_text().splitlines()) <= 120
    assert "nan" not in (out / "table1.md").read_text().lower()
    test_b = json.loads((b / "nll_test" / "summary.json").read_text())
    assert float(row_b[C.NLL_TEST]) == test_b["total_bpd"]
    assert float(row_b[C.NLL_TEST_STDERR]) == test_b["total_bpd_stderr"]

    row_a = next(r for m, r in mine.items() if "cifar_simple" in m)
    assert row_a[C.PAPER_ROW] == "Ours (L_simple)"
    assert float(row_a[C.DELTA_FID]) == pytest.approx(4.0 - 3.17, abs=1e-12)
    test_a = json.loads((a / "nll_test" / "summary.json").read_text())
    train_a = json.loads((a / "nll_train" / "summary.json").read_text())
    assert float(row_a[C.DELTA_NLL_TEST]) == pytest.approx(test_a["total_bpd"] - 3.75, abs=1e-12)
    assert float(row_a[C.DELTA_NLL_TRAIN]) == pytest.approx(train_a["total_bpd"] - 3.72, abs=1e-12)
    assert row_a[C.COMPARISON] == "comparable"
    md_a = next(r for r in _md_rows(out / "table1.md") if "cifar_simple" in r["Model"])
    assert md_a["FID"] == "4.0" and md_a["NLL Test (Train)"] == \
        f"≤ {test_a['total_bpd']:.2f} ± {test_a['total_bpd_stderr']:.2f} ({train_a['total_bpd']:.2f})"
    assert "FID +0.83, NLL " in md_a["vs paper"]
    row_nll = next(r for m, r in mine.items() if "plain_nll" in m)
    assert row_nll[C.NLL_TRAIN] == "" and row_nll[C.FID] == ""

    # provenance of each measured cell
    src = json.loads((out / "table1.sources.json").read_text())["cells"]
    fid_a = next(c for c in src if c["column"] == C.FID and "cifar_simple" in c["row_label"])
    assert fid_a["value"] == 4.0 and fid_a["from"]["backend"] == "torch-fidelity" and fid_a["from"]["n_samples"] == 50_000
    ident = read_summary(a / "nll_test").model_sha256  # the model identity, not the weights' or file's hash
    assert ident == model_entry()["identity"]["sha256"] != "ab" * 32
    assert fid_a["from"]["file"].endswith("fid/metrics.json") and fid_a["from"]["model_identity"] == ident
    nll_a = next(c for c in src if c["column"] == C.NLL_TEST and "cifar_simple" in c["row_label"])
    assert nll_a["from"]["split"] == "test" and nll_a["from"]["n_images"] == 10_000
    assert nll_a["from"]["model_identity"] == ident and "model_sha256" not in nll_a["from"]
    assert f"[model {ident[:12]}]" in fid_a["row_label"]
    assert not any(c["column"] == C.FID and "embedded_L" in c["row_label"] for c in src)

    # Table 2: the grid with the paper's values beside; paper-only cells stay measured-blank
    t2 = pd.read_csv(out / "table2.csv", keep_default_na=False)
    simple = t2[(t2[C.OBJECTIVE] == "L_simple") & (t2[C.MEAN_TYPE] == "eps")]
    assert len(simple) == 1 and float(simple[C.FID].iloc[0]) == 4.0 and float(simple[C.PAPER_FID].iloc[0]) == 3.17
    assert simple[C.VAR_TYPE].iloc[0] == "fixed" and simple[C.VAR_TYPE_RUN].iloc[0] == "fixed-large"
    eps_l = t2[(t2[C.OBJECTIVE] == "L") & (t2[C.MEAN_TYPE] == "eps") & (t2[C.VAR_TYPE] == "fixed")]
    assert len(eps_l) == 1 and eps_l[C.FID].iloc[0] == "" and float(eps_l[C.PAPER_FID].iloc[0]) == 13.51
    mu_learned = t2[(t2[C.MEAN_TYPE] == "mu") & (t2[C.VAR_TYPE] == "learned")]
    assert mu_learned[C.FID].iloc[0] == "" and float(mu_learned[C.PAPER_FID].iloc[0]) == 23.69

    # Table 3: the plain FID output against LSUN Bedroom gets its row; the paper's rows are all there
    t3 = pd.read_csv(out / "table3.csv", keep_default_na=False)
    assert len(t3[t3[C.ORIGIN] == "paper"]) == 5
    lsun = t3[t3[C.ORIGIN] == "measured"]
    assert len(lsun) == 1 and float(lsun[C.LSUN_BEDROOM].iloc[0]) == 9.5 and lsun[C.LSUN_CHURCH].iloc[0] == ""

    # Table 4: one block per input with a curve (T = 20: no paper columns)
    t4 = pd.read_csv(out / "table4.csv", keep_default_na=False)
    assert list(t4.columns) == list(C.TABLE4_REPORT_COLUMNS)
    assert len(t4) == 30 and set(t4[C.PAPER_RATE_BPD]) == {""}

    # Figure 5 and the index
    for name, magic in (("figure5.png", PNG_MAGIC), ("figure5.pdf", PDF_MAGIC)):
        data = (out / name).read_bytes()
        assert data.startswith(magic) and len(data) > 10_000
    index = (out / "report.md").read_text()
    for link in ("table1.csv", "table2.md", "table3.sources.json", "table4.csv", "figure5.png", "figure5.pdf"):
        assert f"]({link})" in index
    assert "fid/metrics.json" in index and "backend torch-fidelity" in index and "nan" not in index.lower()
    assert f"model identity {ident[:12]}" in index and "efefefefefef" not in index  # not the checkpoint file hash
    assert capsys.readouterr().err == ""  # nothing mixed, nothing twice: no warning


def test_report_uses_rate_distortion_output_and_paper_table4(tmp_path, capsys):
    run = write_run_dir(tmp_path / "run", T=1000, data="cifar10:train")
    assert main(["rate-distortion", str(run / "nll_test"), "--out", str(run / "rate_distortion")]) == 0
    manifest = build_report([run], tmp_path / "out")
    assert "figure5.png" in manifest.files and "report.md" in manifest.files
    t4 = pd.read_csv(tmp_path / "out" / "table4.csv")
    rd4 = pd.read_csv(run / "rate_distortion" / "table4.csv")
    np.testing.assert_allclose(t4[C.RATE_BPD], rd4[C.RATE_BPD], rtol=1e-15)
    assert t4[C.PAPER_RMSE].iloc[0] == 0.95136
    assert all("rate_distortion/curve.csv" in s for s in t4[C.SOURCE])
    # the same inputs again: rewritten in place (what `reproduce` does after each stage)
    build_report([run], tmp_path / "out")


def test_report_fid_without_inception_scores(tmp_path):
    run = write_run_dir(tmp_path / "run", data="cifar10:train", fid=False)
    write_fid_dir(run / "fid", fid=5.0, is_mean=None, is_std=None, ref="cifar10:train", samples_model=model_entry(),
                  n_samples=50_000, comparable=True)
    build_report([run], tmp_path / "out")
    row = [r for r in _csv_rows(tmp_path / "out" / "table1.csv") if r[C.ORIGIN] == "measured"][0]
    assert row[C.FID] == "5.0" and row[C.IS] == "" and row[C.DELTA_IS] == ""
    assert float(row[C.DELTA_FID]) == pytest.approx(5.0 - 3.17, abs=1e-12)


@pytest.mark.parametrize("kind", ["empty", "missing", "bad_json"])
def test_report_bad_input_exit_2(tmp_path, capsys, kind):
    d = tmp_path / "run"
    if kind == "empty":
        d.mkdir()
    elif kind == "bad_json":
        write_run_dir(d)
        (d / "fid" / "metrics.json").write_text("{not json")
    code = main(["report", str(d), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(d) in err
    assert not (tmp_path / "out").exists()


def test_report_refuses_foreign_out(tmp_path, capsys):
    run = write_run_dir(tmp_path / "run")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.txt").write_text("something else")
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 2
    assert main(["report", str(run), "--out", str(tmp_path / "out"), "--force"]) == 0
    assert not (tmp_path / "out" / "x.txt").exists()


# -- model identity, duplicates, typed inputs, the --out claim ------------------------------------------------

def _measured(path):
    return [r for r in _csv_rows(path) if r[C.ORIGIN] == "measured"]


def _warnings(err):
    return [ln for ln in err.splitlines() if ln.startswith("ddpm-bench report: warning:")]


def test_mixed_model_run_dir_is_split_one_row_per_model(tmp_path, capsys):
    """nll_train, nll_test and gap of one model, samples and fid of another: two rows, never one."""
    run = write_run_dir(tmp_path / "mixed", data="cifar10:train", fid_value=4.0, samples_sha256="cd" * 32)
    assert main(["rate-distortion", str(run / "nll_test"), "--out", str(run / "rate_distortion")]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["report", str(run), "--out", str(out)]) == 0
    warnings = _warnings(capsys.readouterr().err)
    nll_id = read_summary(run / "nll_test").model_sha256
    fid_id = model_entry("cd" * 32)["identity"]["sha256"]
    assert len(warnings) == 1, warnings
    assert (f"{run}: outputs of 2 different models (nll_train, nll_test, gap, rate_distortion: model {nll_id[:12]}; "
            f"samples, fid: model {fid_id[:12]}); shown as 2 rows, one per model, never merged") in warnings[0]
    rows = _measured(out / "table1.csv")
    assert len(rows) == 2
    by_model = {r[C.MODEL]: r for r in rows}
    nll_row = next(r for m, r in by_model.items() if f"[model {nll_id[:12]}]" in m)
    fid_row = next(r for m, r in by_model.items() if f"[model {fid_id[:12]}]" in m)
    assert nll_row[C.FID] == "" and nll_row[C.NLL_TEST] != "" and nll_row[C.NLL_TRAIN] != ""
    assert fid_row[C.FID] == "4.0" and fid_row[C.NLL_TEST] == "" and fid_row[C.NLL_TRAIN] == ""
    cells = json.loads((out / "table1.sources.json").read_text())["cells"]
    for c in cells:  # every cell names the model that produced it, and sits in that model's row
        ident = fid_id if c["column"] in (C.FID, C.IS, C.IS_STD) else nll_id
        assert c["from"]["model_identity"] == ident and f"[model {ident[:12]}]" in c["row_label"]
    t4 = json.loads((out / "table4.sources.json").read_text())["cells"]
    assert t4 and all(c["from"]["model_identity"] == nll_id for c in t4)
    t2 = json.loads((out / "table2.sources.json").read_text())["cells"]
    assert t2 and all(c["from"]["model_identity"] == fid_id for c in t2)
    index = (out / "report.md").read_text()
    assert f"model identity {nll_id[:12]}" in index and f"model identity {fid_id[:12]}" in index
    assert index.count("holds outputs of 2 models") == 2


def test_fid_of_plain_images_in_a_run_dir_is_its_own_row(tmp_path, capsys):
    run = write_run_dir(tmp_path / "run", data="cifar10:train", fid=False)
    write_fid_dir(run / "fid", fid=5.0, ref="cifar10:train", samples_model=None)  # images, no sample manifest
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1 and "fid: model none" in warnings[0] and "shown as 2 rows" in warnings[0]
    rows = _measured(tmp_path / "out" / "table1.csv")
    assert len(rows) == 2 and sum(r[C.FID] == "5.0" for r in rows) == 1
    assert next(r for r in rows if r[C.FID] == "5.0")[C.NLL_TEST] == ""
    assert "model identity none" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("how", ["same_dir_twice", "same_dir_other_spelling", "copied_dir", "run_and_its_nll"])
def test_same_runs_twice_are_counted_once(tmp_path, capsys, how):
    run = write_run_dir(tmp_path / "run", data="cifar10:train")
    other = {"same_dir_twice": str(run), "same_dir_other_spelling": str(tmp_path / "." / "run" / ".." / "run"),
             "run_and_its_nll": str(run / "nll_test")}.get(how)
    if how == "copied_dir":
        other = str(tmp_path / "copy")
        shutil.copytree(run, other)
    assert main(["report", str(run), other, "--out", str(tmp_path / "out")]) == 0
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1, warnings
    expect = {"same_dir_twice": "given twice; read once", "same_dir_other_spelling": f"is {run} again; read once",
              "copied_dir": f"holds the same runs as {run}", "run_and_its_nll": f"holds only runs also in {run}"}[how]
    assert expect in warnings[0]
    assert len(_measured(tmp_path / "out" / "table1.csv")) == 1
    inputs = (tmp_path / "out" / "report.md").read_text().split("## Inputs")[1].split("## Table 1")[0]
    assert inputs.count("\n- `") == 1


def test_a_run_shared_by_two_inputs_is_kept_in_the_first(tmp_path, capsys):
    a = write_run_dir(tmp_path / "a", data="cifar10:train")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "nll_train")
    write_nll_dir(b / "nll_train", T=20, seed=9, data="cifar10:train")  # another nll run, the same model
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    warnings = _warnings(capsys.readouterr().err)
    assert any(f"{b / 'nll_test' / 'summary.json'} is the run already read from {a / 'nll_test' / 'summary.json'}"
               in w for w in warnings), warnings
    rows = {r[C.MODEL]: r for r in _measured(tmp_path / "out" / "table1.csv")}
    row_b = next(r for m, r in rows.items() if m.startswith("ddpm-bench: b "))
    assert row_b[C.NLL_TEST] == "" and row_b[C.FID] == "" and row_b[C.NLL_TRAIN] != ""


def _set(path, dotted, value):
    """A field written wrongly by a writer (its content hash written with it: the field's type is checked, not
    the file's integrity, which tests/test_faults.py checks)."""
    obj = json.loads(path.read_text())
    *parents, last = dotted.split(".")
    d = obj
    for k in parents:
        d = d[k]
    if value is _DELETE:
        del d[last]
    else:
        d[last] = value
    path.write_text(json.dumps(rehashed(obj)))


def rehashed(obj: dict) -> dict:
    from ddpm_bench.shards import CONTENT, json_sha256

    return {**obj, CONTENT: json_sha256(obj)} if CONTENT in obj else obj


_DELETE = object()


@pytest.mark.parametrize("where, field, value", [
    ("nll_test/summary.json", "total_bpd", "3.7"),
    ("nll_train/summary.json", "n_images", 6.5),
    ("nll_test/summary.json", "model.identity", _DELETE),
    ("nll_test/summary.json", "model.identity.strong", "yes"),
    ("fid/metrics.json", "fid", "4.0"),
    ("fid/metrics.json", "run_id", _DELETE),
    ("fid/metrics.json", "is_reason", 5),
    ("fid/metrics.json", "samples_model.identity.sha256", "abc"),
    ("samples/manifest.json", "num", "100"),
    ("gap.json", "gap_bpd", None),
    ("config.json", "diffusion.T", "20"),
    ("config.json", "training", [1]),
    ("plain/summary.json", "T", None),
    ("plain_fid/metrics.json", "n_samples", "all"),
])
def test_wrongly_typed_input_exit_2_naming_file_and_field(tmp_path, capsys, where, field, value):
    run = write_run_dir(tmp_path / "run", data="cifar10:train")
    write_nll_dir(tmp_path / "run" / "plain", data="cifar10:test", seed=4)
    write_fid_dir(tmp_path / "run" / "plain_fid")
    arg = run / where.split("/")[0] if where.startswith("plain") else run
    _set(run / where, field, value)
    code = main(["report", str(arg), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    shown = field.split(".")[0] if field == "model.identity" else field  # a missing identity names model.identity.sha256
    assert str(run / where) in err and f"field '{shown}" in err, err
    assert not (tmp_path / "out").exists()  # inputs are checked before --out is claimed


@pytest.mark.parametrize("damage, message", [
    ("no_curve_column", "column 'rmse' is missing"),
    ("garbage_summary", "unreadable JSON"),
])
def test_bad_rate_distortion_input_exit_2(tmp_path, capsys, damage, message):
    run = write_run_dir(tmp_path / "run", data="cifar10:train")
    rd = run / "rate_distortion"
    assert main(["rate-distortion", str(run / "nll_test"), "--out", str(rd)]) == 0
    if damage == "no_curve_column":  # recorded in summary.json as it is now: the column check itself is tried
        (rd / "curve.csv").write_text(pd.read_csv(rd / "curve.csv").drop(columns=[C.RMSE]).to_csv(index=False))
        summary = json.loads((rd / "summary.json").read_text())
        summary["files"]["curve.csv"] = file_sha256(rd / "curve.csv")
        (rd / "summary.json").write_text(json.dumps(rehashed(summary)))
    else:
        (rd / "summary.json").write_text("[1, 2")
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(rd) in err, err
    assert not (tmp_path / "out").exists()


def test_out_claim_identity_is_the_runs_not_the_paths(tmp_path, capsys):
    run = write_run_dir(tmp_path / "run", data="cifar10:train")
    nll = write_nll_dir(tmp_path / "nll", data="embedded:test", seed=3)
    out = tmp_path / "out"
    assert main(["report", str(run), str(nll), "--out", str(out)]) == 0
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["command"] == "report"
    keys = set(manifest["identity"]["inputs"])
    test_id = json.loads((run / "nll_test" / "summary.json").read_text())["run_id"]
    assert f"nll:{test_id}" in keys and all(str(tmp_path) not in k for k in keys)
    assert manifest["identity"]["inputs"][f"nll:{test_id}"] == read_summary(run / "nll_test").model_sha256
    # the same runs, moved and given in the other order: the same report, rewritten in place
    moved = tmp_path / "moved"
    run.rename(moved)
    assert main(["report", str(nll), str(moved), "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["run_id"] == manifest["run_id"]
    # other runs: refused without --force, naming what differs
    capsys.readouterr()
    assert main(["report", str(moved), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "inputs.nll:" in err and "--force" in err
    assert main(["report", str(moved), "--out", str(out), "--force"]) == 0
    assert len(_measured(out / "table1.csv")) == 1


def test_config_and_model_diffusion_disagree_warns_and_uses_the_model(tmp_path, capsys):
    run = write_run_dir(tmp_path / "run", data="cifar10:train", var_type="fixed-small")
    cfg = json.loads((run / "config.json").read_text())
    cfg["diffusion"]["var_type"] = "fixed-large"  # the config says one thing, the model evaluated another
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 1 and "var_type 'fixed-large' -> 'fixed-small'" in warnings[0], warnings
    t2 = pd.read_csv(tmp_path / "out" / "table2.csv", keep_default_na=False)
    assert list(t2[t2[C.SOURCE].str.contains("run:")][C.VAR_TYPE_RUN]) == ["fixed-small"]


# -- what a researcher sees, round two -----------------------------------------------------------------------

def _section(text: str, start: str, end: str = "\n## ") -> str:
    """The part of report.md from the line `start` to the next section."""
    head = text.index(start)
    stop = text.find(end, head + len(start))
    return text[head:] if stop < 0 else text[head:stop]


def test_table1_nll_is_the_most_precise_output_so_its_difference_is_the_gap(tmp_path):
    """The 500-image importance-sampled bounds of `gap_terms`, not the few-image exact ones: Table 1's
    test - train is gap.json's gap, and its cell, CSV and sources name the image count and estimator."""
    run = write_run_dir(tmp_path / "run", data="embedded:train", gap_images=50, gap_shift_bpd=0.4,
                        max_gap=0.1)
    out = tmp_path / "out"
    build_report([run], out)
    row = _measured(out / "table1.csv")[0]
    test, train = read_summary(run / "gap_nll_test"), read_summary(run / "gap_nll_train")
    assert test.total_bpd_stderr < read_summary(run / "nll_test").total_bpd_stderr  # what makes it the choice
    assert float(row[C.NLL_TEST]) == test.total_bpd and float(row[C.NLL_TRAIN]) == train.total_bpd
    assert float(row[C.NLL_TEST_STDERR]) == test.total_bpd_stderr
    assert (row[C.NLL_TEST_N], row[C.NLL_TEST_ESTIMATOR]) == ("50", "importance")
    assert (row[C.NLL_TRAIN_N], row[C.NLL_TRAIN_ESTIMATOR]) == ("50", "importance")
    gap = json.loads((run / "gap.json").read_text())
    assert float(row[C.NLL_TEST]) - float(row[C.NLL_TRAIN]) == pytest.approx(gap["gap_bpd"], abs=1e-12)
    md = next(r for r in _md_rows(out / "table1.md") if r["Model"].startswith("run ["))
    assert md["NLL Test (Train)"] == \
        f"≤ {test.total_bpd:.2f} ± {test.total_bpd_stderr:.2f} ({train.total_bpd:.2f})"
    assert "test from `gap_nll_test/`, 50 images, estimator importance" in \
        (out / "table1.md").read_text().replace("\n  ", " ")
    cells = json.loads((out / "table1.sources.json").read_text())["cells"]
    nll = {c["column"]: c["from"] for c in cells if c["column"] in (C.NLL_TEST, C.NLL_TRAIN)}
    assert nll[C.NLL_TEST]["file"].endswith("gap_nll_test/summary.json")
    assert nll[C.NLL_TRAIN]["file"].endswith("gap_nll_train/summary.json")
    assert nll[C.NLL_TEST]["estimator"] == "importance" and nll[C.NLL_TEST]["n_images"] == 50


def test_an_output_without_standard_error_ranks_last(tmp_path):
    """A 1-image output has no standard error: any output with one is more precise, however large."""
    run = write_run_dir(tmp_path / "run", data="embedded:train")
    shutil.rmtree(run / "nll_test")
    write_nll_dir(run / "nll_test", n=1, seed=2, data="embedded:test")
    write_nll_dir(run / "gap_nll_test", n=2, seed=4, data="embedded:test", terms_per_image=2)
    assert read_summary(run / "nll_test").total_bpd_stderr is None
    build_report([run], tmp_path / "out")
    row = _measured(tmp_path / "out" / "table1.csv")[0]
    assert float(row[C.NLL_TEST]) == read_summary(run / "gap_nll_test").total_bpd
    assert row[C.NLL_TEST_N] == "2"


def test_a_likelihood_is_never_shown_in_the_bounds_cell(tmp_path):
    """An nll output whose summary says quantity "likelihood" (a probability-flow ODE estimate) has columns
    of its own, not those of the bound, and is shown without "≤"."""
    nll = write_nll_dir(tmp_path / "ode_nll", n=6, data="embedded:test", quantity="likelihood")
    build_report([nll], tmp_path / "out")
    row = _measured(tmp_path / "out" / "table1.csv")[0]
    assert row[C.NLL_TEST] == "" and row[C.NLL_TEST_STDERR] == "" and row[C.NLL_TEST_N] == ""
    assert row[C.NLL_ODE_TEST] != "" and row[C.NLL_ODE_TEST_N] == "6"
    cells = [c["column"] for c in json.loads((tmp_path / "out" / "table1.sources.json").read_text())["cells"]
             if c["column"].startswith("NLL")]
    assert cells and all(c.startswith("NLL_ODE") for c in cells)
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "NLL (ODE) Test (Train)" in md and f"| {float(row[C.NLL_ODE_TEST]):.2f} ±" in md


@pytest.mark.parametrize("shift, max_gap, words", [
    (0.4, 0.1, "overfits: the test-minus-train gap {gap} bits/dim (95% interval {lo}..{hi}, 50 test and 50 "
               "train images) lies above max_gap 0.1"),
    (0.0, 0.5, "no overfitting beyond max_gap 0.5: the test-minus-train gap {gap} bits/dim (95% interval "
               "{lo}..{hi}, 50 test and 50 train images) lies below it"),
])
def test_gap_verdict_in_plain_words(tmp_path, capsys, shift, max_gap, words):
    run = write_run_dir(tmp_path / "run", data="embedded:train", gap_images=50, gap_shift_bpd=shift,
                        max_gap=max_gap)
    result = build_report([run], tmp_path / "out")
    gap = json.loads((run / "gap.json").read_text())
    assert gap["exceeds"] is (shift > 0) and gap["verdict"] == ("above" if shift > 0 else "below")

    def fmt(v):
        return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.2g}"

    sentence = words.format(gap=fmt(gap["gap_bpd"]), lo=fmt(gap["ci95"][0]), hi=fmt(gap["ci95"][1]))
    index = (tmp_path / "out" / "report.md").read_text()
    assert sentence in _section(index, "## Inputs")
    table1 = _section(index, "## Table 1").replace("\n  ", " ")  # the notes' lines, unwrapped
    assert sentence in table1
    assert sentence in "\n".join(result.lines())
    assert main(["report", str(run), "--out", str(tmp_path / "out2")]) == 0
    assert sentence in capsys.readouterr().out


def test_no_overfitting_claim_across_two_data_sets(tmp_path):
    """gap.json (without `splits`, as 0.2 wrote it) of a train split of one data set and a test split of
    another: its `exceeds` is no verdict on overfitting, and the report says why."""
    run = write_run_dir(tmp_path / "run", data="embedded:train", gap_images=50, gap_shift_bpd=0.4,
                        max_gap=0.1)
    gap = json.loads((run / "gap.json").read_text())
    assert gap["exceeds"] is True
    old = {k: v for k, v in gap.items() if k not in ("splits", "verdict")}
    (run / "gap.json").write_text(json.dumps(rehashed({**old, "train": "cifar10:train"})))
    build_report([run], tmp_path / "out")
    index = (tmp_path / "out" / "report.md").read_text()
    assert "overfit" not in index.replace("no overfitting verdict", "")
    assert "no overfitting verdict" in _section(index, "## Inputs")
    assert "compares two data sets (CIFAR-10 for train, embedded for test)" in index.replace("\n  ", " ")


@pytest.mark.parametrize("train, test, splits", [
    ("cifar10:train", "embedded:test", "cifar10:train and embedded:test, declared one distribution "
                                       "(--same-distribution)"),  # what gap.json records of the user's word
    ("/data/a.npz", "/data/b.npz", None),  # two files, no `splits` (0.2): one distribution, as `gap` judges it
])
def test_gap_report_and_reproduce_give_one_verdict(tmp_path, train, test, splits):
    run = write_run_dir(tmp_path / "run", data="embedded:train", gap_images=50, gap_shift_bpd=0.4, max_gap=0.1)
    gap = {k: v for k, v in json.loads((run / "gap.json").read_text()).items() if k != "splits"}
    (run / "gap.json").write_text(json.dumps(rehashed({**gap, "train": train, "test": test,
                                                       **({"splits": splits} if splits else {})})))
    build_report([run], tmp_path / "out")
    assert "overfits: the test-minus-train gap" in _section((tmp_path / "out" / "report.md").read_text(), "## Inputs")
    lines, exceeds = headline(run)
    assert exceeds and any(line.startswith("the model overfits") for line in lines)


def test_rate_distortion_and_report_share_the_table4_delta_rule(tmp_path, capsys, monkeypatch):
    """One function says when Table 4's deltas to the paper are shown, for `rate-distortion`'s table4.csv/.md
    and for the report: the bound on the whole CIFAR-10 test set with T = 1000."""
    run = write_run_dir(tmp_path / "run", T=1000, data="embedded:train", fid=False)
    per_image = read_output(run / "nll_test").per_image
    curve = rate_distortion_curve(per_image.terms, per_image.mse)
    assert tables.table4_comparison("cifar10:test", 10_000, 1000) == []
    assert tables.table4_frame(curve, "cifar10:test", 10_000)[C.DELTA_RMSE].notna().all()
    for data, n, T in (("embedded:test", 6, 1000), ("cifar10:test", 6, 1000), ("cifar10:train", 10_000, 1000),
                       ("cifar10:test", 10_000, 20)):
        assert tables.table4_comparison(data, n, T), (data, n, T)
    assert tables.table4_frame(curve, "embedded:test", 6)[C.DELTA_RMSE].isna().all()

    def deltas(rd_dir, report_dir):
        assert main(["rate-distortion", str(run / "nll_test"), "--out", str(rd_dir)]) == 0
        build_report([run], report_dir)
        rd = pd.read_csv(rd_dir / "table4.csv")
        rep = pd.read_csv(report_dir / "table4.csv")
        return rd[C.DELTA_RATE_BPD].notna().all(), rep[C.DELTA_RATE_BPD].notna().all()

    assert deltas(tmp_path / "rd1", tmp_path / "rep1") == (False, False)  # 6 embedded images: no deltas
    monkeypatch.setattr(tables, "table4_comparison", lambda data, n_images, T: [])  # the rule, changed once
    assert deltas(tmp_path / "rd2", tmp_path / "rep2") == (True, True)


def test_tables_1_and_2_say_cifar10_only_for_cifar10_runs_and_table3_only_when_measured(tmp_path):
    run = write_run_dir(tmp_path / "emb", data="embedded:train", fid_value=20.0)
    out = tmp_path / "out"
    build_report([run], out)
    index = (out / "report.md").read_text()
    titles = [line for line in index.splitlines() if line.startswith("## Table")]
    assert titles == ["## Table 1: results on embedded, beside the paper's CIFAR-10 results",
                      "## Table 2: ablation on embedded, beside the paper's CIFAR-10 ablation (IS and FID)",
                      "## Table 4: rate and distortion along the reverse process"]
    assert "Table 3 (FID on LSUN and CelebA-HQ) is left out: no input measured those data sets" in index
    for name, mine in (("table1", "| emb ["), ("table2", ": emb [")):
        md = (out / f"{name}.md").read_text()
        blocks = md.split("### ")[1:]
        assert len(blocks) == 2
        ours = next(b for b in blocks if mine in b)
        assert ours.startswith("Measured on embedded (not CIFAR-10") and "Ours (L_simple)" not in ours
        assert "paper IS" not in ours and "paper FID" not in ours  # Table 2: no paper values beside it
        paper = next(b for b in blocks if mine not in b)
        assert paper.startswith("The paper's CIFAR-10") and "for context" in paper.splitlines()[0]
        assert json.loads((out / f"{name}.sources.json").read_text())["title"].startswith(
            ("Table 1: results on embedded", "Table 2: ablation on embedded"))
    t2 = pd.read_csv(out / "table2.csv", keep_default_na=False)
    ours = t2[t2[C.DATA] == "embedded:train"]
    assert len(ours) == 1 and float(ours[C.FID].iloc[0]) == 20.0 and ours[C.PAPER_FID].iloc[0] == ""
    # a CIFAR-10 run: the paper's table, titled CIFAR-10, its row among the paper's
    cifar = write_run_dir(tmp_path / "cifar", data="cifar10:train")
    build_report([cifar], tmp_path / "out2")
    index = (tmp_path / "out2" / "report.md").read_text()
    assert "## Table 1: CIFAR-10 results\n" in index
    assert "## Table 2: CIFAR-10 ablation (IS and FID)\n" in index
    assert "### " not in (tmp_path / "out2" / "table1.md").read_text()


def test_report_shows_the_samples_and_why_is_is_empty(tmp_path):
    reason = "feature extractor packaged has no logits (pool3 features only)"
    run = write_run_dir(tmp_path / "run", data="embedded:train", sample_pngs=True, is_reason=reason)
    out = tmp_path / "out"
    manifest = build_report([run], out)
    for src, name in (("grid.png", "samples_grid.png"), ("progressive.png", "progressive.png")):
        assert (out / name).read_bytes() == (run / "samples" / src).read_bytes() and name in manifest.files
    lines = (out / "report.md").read_text().splitlines()
    samples = [line for line in lines if line.startswith("![")]
    assert any(line.endswith("(samples_grid.png)") for line in samples)
    assert any(line.endswith("(progressive.png)") for line in samples)
    assert f"IS is empty: {reason}" in lines  # a line of its own under the samples
    assert any(line.startswith("- run [") and line.endswith(f"IS is empty: {reason}")
               for line in (out / "table1.md").read_text().replace("\n  ", " ").splitlines())


def test_measured_rows_are_one_compact_table_and_notes_are_said_once(tmp_path):
    run = write_run_dir(tmp_path / "run", data="cifar10:train", gap_images=50)
    assert main(["rate-distortion", str(run / "nll_test"), "--out", str(run / "rate_distortion")]) == 0
    build_report([run], tmp_path / "out")
    index = (tmp_path / "out" / "report.md").read_text()
    assert "Measured rows in full" not in index and "What produced each measured cell" not in index
    t4 = _section(index, "## Table 4")
    measured = t4[t4.index("Measured cells in full"):]
    table = [line for line in measured.splitlines() if line.startswith("|")]
    assert len(table) == 3 and "run [" in table[2] and "s = 20 … 2" in table[2]  # header, rule, one line
    assert not [line for line in measured.splitlines() if line.startswith("- ") and "reverse_time" in line]
    t1 = _section(index, "## Table 1")
    measured = t1[t1.index("Measured cells in full"):]
    rows = [line for line in measured.splitlines() if line.startswith("| run [")]
    assert len(rows) == 3  # FID, NLL test, NLL train: one line each, with n, estimator or tool and file
    assert any("50 images of cifar10:test" in r and "importance" in r and "gap_nll_test/summary.json" in r
               for r in rows)
    notes = t1[t1.index("Not comparable with the paper:"):].replace("\n  ", " ")
    assert notes.count("50,000 samples") == 1  # the FID tool's warning, not ours again
    assert "not comparable to the paper" not in notes


def test_figures_show_every_model_labelled(tmp_path, monkeypatch):
    drawn = {}
    save = report_job.save_figure

    def keep(fig, stem):
        drawn[Path(stem).name] = fig
        return save(fig, stem)

    monkeypatch.setattr(report_job, "save_figure", keep)
    a = write_run_dir(tmp_path / "alpha", data="embedded:train", fid=False)
    b = write_run_dir(tmp_path / "beta", data="embedded:train", fid=False, sha256="cd" * 32)
    build_report([a, b], tmp_path / "out")
    assert set(drawn) == {"figure5", "bits_by_t"}
    for fig in drawn.values():
        texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        lines = [ln for ax in fig.axes for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        for name in ("alpha [", "beta ["):
            assert any(name in t for t in texts), (name, texts)
        assert len({ln.get_color() for ln in lines}) >= 2  # one colour per model


def _absolute_strings(obj) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _absolute_strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _absolute_strings(v)]
    return [obj] if isinstance(obj, str) and obj.startswith("/") else []


def test_no_absolute_paths_in_the_report(tmp_path):
    run = write_run_dir(tmp_path / "run", data="embedded:train", gap_images=20, sample_pngs=True)
    assert main(["rate-distortion", str(run / "nll_test"), "--out", str(run / "rate_distortion")]) == 0
    fid = write_fid_dir(tmp_path / "lsun_fid", fid=9.5, ref=str(tmp_path / "data" / "lsun_bedroom_256.npz"))
    out = tmp_path / "out"
    build_report([run.resolve(), fid.resolve()], out.resolve())
    written = sorted(p for p in out.iterdir()
                     if p.suffix in (".md", ".csv", ".json") and p.name != "run.json")
    assert {p.name for p in written} >= {"report.md", "report.json", "table1.csv", "table3.sources.json"}
    for path in written:
        text = path.read_text()
        assert str(tmp_path) not in text, path.name
        assert not re.search(r"(^|[\s`(\"',:])/(runs|tmp|work)/", text), path.name  # the model's origin too
        if path.suffix == ".json":
            assert _absolute_strings(json.loads(text)) == [], path.name
    report = json.loads((out / "report.json").read_text())
    assert report["run_dirs"] == ["../run", "../lsun_fid"]
    cell = json.loads((out / "table3.sources.json").read_text())["cells"][0]["from"]
    assert cell["file"] == "../lsun_fid/metrics.json" and cell["ref"] == "../data/lsun_bedroom_256.npz"
    assert "[Figure 5](figure5.png)" in (out / "report.md").read_text()


def _segments_hit(box, points: np.ndarray, steps: int = 20) -> bool:
    """Whether the polyline through `points` (display coordinates) passes through `box`."""
    pts = points[np.all(np.isfinite(points), axis=1)]
    if len(pts) == 0:
        return False
    a, b = pts[:-1], pts[1:]
    f = np.linspace(0.0, 1.0, steps)[:, None, None]
    dense = (a[None] + f * (b - a)[None]).reshape(-1, 2) if len(pts) > 1 else pts
    x, y = dense[:, 0], dense[:, 1]
    inside = (x >= box.x0) & (x <= box.x1) & (y >= box.y0) & (y <= box.y1)
    return bool(inside.any())


@pytest.mark.parametrize("decoder_share", ["embedded", "small"])
def test_where_the_bits_go_labels_never_on_a_curve(decoder_share):
    """Every text of the figure (labels, annotations, legend) is drawn where no curve passes: checked with
    matplotlib's renderer, the text boxes against the curves' points in display coordinates."""
    terms, _ = per_image_arrays(n=4, T=1000, seed=0)
    if decoder_share == "embedded":  # as the packaged model: L_0 2.07 of 3.70 bits/dim, L_t falling fast
        w = np.arange(1, 1000) ** -1.5
        terms[:, 0], terms[:, 1:1000] = 2.07, 1.63 * w / w.sum()
    else:  # the 50% and 90% steps away from t = 0
        terms[:, 0] = 0.01
        terms[:, 1:1000] *= 50
    fig = bits_by_t_figure(terms, label="embedded [0b7e522fb705]", title="Where the bits go")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    curves = [ln for ax in fig.axes for ln in ax.get_lines() if len(ln.get_xydata()) > 1]
    assert len(curves) == 2
    texts = [t for ax in fig.axes for t in ax.texts] + [t for lg in fig.legends for t in lg.get_texts()]
    texts += [t for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    boxes = [t.get_window_extent(renderer) for t in texts if t.get_visible() and t.get_text()]
    boxes += [lg.get_window_extent(renderer) for lg in fig.legends]
    boxes += [ax.get_legend().get_window_extent(renderer) for ax in fig.axes if ax.get_legend()]
    assert any("50%" in t.get_text() for t in texts) and any("90%" in t.get_text() for t in texts)
    for line in curves:
        points = line.get_transform().transform(line.get_xydata())
        for box in boxes:
            assert not _segments_hit(box, points), (line.get_label(), box)
