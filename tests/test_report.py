"""`ddpm-bench report`: Tables 1-4 and Figure 5 from run, nll, fid and rate-distortion directories."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ddpm_bench.cli import main
from ddpm_bench.estimators import read_summary
from ddpm_bench.jobs.report import build_report
from ddpm_bench.reporting import columns as C
from tests.synthetic_outputs import model_entry, write_fid_dir, write_nll_dir, write_run_dir

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
    assert md_a["FID"] == "4.00" and md_a["NLL Test (Train)"] == f"≤ {test_a['total_bpd']:.2f} ({train_a['total_bpd']:.2f})"
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
    assert "figure5.png" in manifest["files"] and "report.md" in manifest["files"]
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
    obj = json.loads(path.read_text())
    *parents, last = dotted.split(".")
    d = obj
    for k in parents:
        d = d[k]
    if value is _DELETE:
        del d[last]
    else:
        d[last] = value
    path.write_text(json.dumps(obj))


_DELETE = object()


@pytest.mark.parametrize("where, field, value", [
    ("nll_test/summary.json", "total_bpd", "3.7"),
    ("nll_train/summary.json", "n_images", 6.5),
    ("nll_test/summary.json", "model.identity", _DELETE),
    ("nll_test/summary.json", "model.identity.strong", "yes"),
    ("fid/metrics.json", "fid", "4.0"),
    ("fid/metrics.json", "run_id", _DELETE),
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
    if damage == "no_curve_column":
        (rd / "curve.csv").write_text(pd.read_csv(rd / "curve.csv").drop(columns=[C.RMSE]).to_csv(index=False))
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
