"""Tables 1-4 of Ho et al. (2020) with the measured values beside the paper's (pandas -> CSV, tabulate -> Markdown).

Every table is a DataFrame whose columns are constants of `reporting.columns`. A measured value the runs do
not have is NaN in the frame, an empty cell in the CSV and in the Markdown; it is never filled in. Each
measured cell has an entry in the table's companion `*.sources.json` (run directory, file, the identity of
the model that produced it, sample or image count, backend, data and split), and each row a short `source`.
A measured row holds the outputs of one model identity only (`reporting.inputs.split_by_model`) and its
label names that identity (short sha256). `delta_*` columns are
measured minus paper, filled only where both exist and the paper row applies (same data set and
training choices).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ddpm_bench.identity import ModelIdentity
from ddpm_bench.outputs import NllSummary, RunConfigFile, feature_extractor_of
from ddpm_bench.rate_distortion_curve import RateDistortionCurve, table4_rows
from ddpm_bench.reporting import columns as C
from ddpm_bench.reporting.inputs import Part, RunInputs, dataset_of, split_of
from ddpm_bench.reporting.paper import PAPER_VALUES_NAME, paper_table4_columns, paper_table_rows, paper_values
from ddpm_bench.shards import atomic_write_json, atomic_write_text

PAPER_SOURCE = f"paper ({PAPER_VALUES_NAME})"
MD_FLOAT_FORMAT = "{:.6g}"

# the paper's Table 1 row each training choice is compared with (CIFAR-10 only): (objective, var group)
TABLE1_PAPER_ROWS = {("L_simple", "fixed"): "Ours (L_simple)", ("L", "fixed"): "Ours (L, fixed isotropic Sigma)"}
# Table 3: the paper's data set columns by `inputs.dataset_of` name
TABLE3_COLUMN_OF = {"lsun_bedroom": C.LSUN_BEDROOM, "lsun_church": C.LSUN_CHURCH, "lsun_cat": C.LSUN_CAT,
                    "celebahq": C.CELEBAHQ}
TABLE3_PAPER_ROW = "Ours (L_simple)"


@dataclass
class Table:
    """A report table: the frame, the provenance of its measured cells, and a note on how to read it."""

    name: str  # file stem: table1 .. table4
    title: str
    frame: pd.DataFrame
    cells: list[dict] = field(default_factory=list)  # {"row", "row_label", "column", "value", "from": {...}}
    note: str = ""
    display: pd.DataFrame | None = None  # the table a person reads (the .md); None: the frame itself


# -- small helpers ----------------------------------------------------------------------------------------

def number(v) -> float:
    """A JSON value as float; None (or anything not a finite-or-NaN number) as NaN, never 0."""
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def delta(measured: float, paper: float) -> float:
    """measured - paper where both are numbers, NaN otherwise."""
    return measured - paper if np.isfinite(measured) and np.isfinite(paper) else math.nan


def var_group(var_type: str | None) -> str | None:
    """The paper's Table 2 variance groups: fixed-large and fixed-small are "fixed", learned is "learned"."""
    if var_type is None:
        return None
    return "fixed" if var_type.startswith("fixed") else var_type


def run_label(run: RunInputs) -> str:
    """"ddpm-bench: NAME [model SHORT-IDENTITY] (objective, mean type, variance type)"."""
    settings = [x for x in (run.objective, run.mean_type, run.var_type) if x]
    return f"ddpm-bench: {run.label}" + (f" ({', '.join(settings)})" if settings else "")


def model_source(identity: ModelIdentity | None) -> dict:
    """The model a value belongs to: its identity (sha256 of weights, ema/raw and diffusion settings; not
    the checkpoint file's hash), whether that identity is strong, and where the model was found."""
    if identity is None:
        return {"model_identity": None}
    return {"model_identity": identity.sha256, "model_identity_strong": identity.strong, "model": identity.origin,
            "weights": identity.weights}


def nll_source(run: RunInputs, nll: Part[NllSummary]) -> dict:
    s = nll.output
    return {"run_dir": str(run.path), "file": str(nll.file), "produced_by": "ddpm-bench nll", "run_id": s.run_id,
            **model_source(nll.identity), "n_images": s.n_images, "data": s.data, "split": split_of(s.data),
            "seed": s.seed, "draws": s.draws, "T": s.T, "clip": s.clip, "decoder_cdf": s.decoder_cdf,
            "precision": s.precision}


def fid_source(run: RunInputs) -> dict:
    m = run.fid.output
    fe_name, fe_sha256 = feature_extractor_of(m)
    return {"run_dir": str(run.path), "file": str(run.fid.file), "produced_by": "ddpm-bench fid", "run_id": m.run_id,
            **model_source(run.fid.identity), "n_samples": m.n_samples, "n_ref": m.n_ref, "ref": m.ref,
            "split": split_of(m.ref), "backend": m.backend, "feature_extractor": fe_name,
            "feature_extractor_sha256": fe_sha256}


def _files_used(run: RunInputs, *paths: Path | None) -> str:
    used = []
    for p in paths:
        if p is None:
            continue
        try:
            used.append(str(Path(p).resolve().relative_to(run.path.resolve())))
        except ValueError:
            used.append(str(p))
    return f"{run.path}: {', '.join(used)}" if used else ""


def _add_cells(cells: list[dict], row: int, label: str, values: dict, origin: dict) -> None:
    for column, value in values.items():
        if np.isfinite(value):
            cells.append({"row": row, "row_label": label, "column": column, "value": value, "from": origin})


def _frame(rows: list[dict], cols: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(cols))


# -- Table 1 ------------------------------------------------------------------------------------------------

def table1(runs: list[RunInputs], values: dict | None = None) -> Table:
    """Table 1 (CIFAR-10): IS, FID, NLL test (train) in bits/dim with standard errors; paper rows first."""
    values = values or paper_values()
    paper_rows = paper_table_rows("table1_cifar10", values)
    paper_by_model = {r["model"]: r for r in paper_rows if not r["conditional"]}
    rows, cells = [], []
    for r in paper_rows:
        rows.append({C.MODEL: r["model"], C.ORIGIN: C.ORIGIN_PAPER, C.DATA: "cifar10", C.CONDITIONAL: r["conditional"],
                     C.IS: number(r["IS"]), C.IS_STD: number(r["IS_std"]), C.FID: number(r["FID"]),
                     C.NLL_TEST: number(r["NLL_test"]), C.NLL_TRAIN: number(r["NLL_train"]), C.SOURCE: PAPER_SOURCE})
    for run in runs:
        if run.fid is None and run.nll_test is None and run.nll_train is None:
            continue
        if _table3_column(run) is not None:  # an LSUN / CelebA-HQ run belongs to Table 3
            continue
        fid = run.fid.output if run.fid else None
        test = run.nll_test.output if run.nll_test else None
        train = run.nll_train.output if run.nll_train else None
        row = {C.MODEL: run_label(run), C.ORIGIN: C.ORIGIN_MEASURED, C.DATA: run.data, C.CONDITIONAL: False,
               C.IS: number(fid and fid.is_mean), C.IS_STD: number(fid and fid.is_std), C.FID: number(fid and fid.fid),
               C.NLL_TEST: number(test and test.total_bpd), C.NLL_TEST_STDERR: number(test and test.total_bpd_stderr),
               C.NLL_TRAIN: number(train and train.total_bpd),
               C.NLL_TRAIN_STDERR: number(train and train.total_bpd_stderr),
               C.SOURCE: _files_used(run, *(p.file for p in (run.fid, run.nll_test, run.nll_train) if p))}
        if run.nll_unknown_split and test is not None:
            row[C.SOURCE] += f" (data {test.data} is no :train/:test split; shown as test)"
        paper_name = None
        if dataset_of(run.data) == "cifar10" and run.mean_type in (None, "eps"):
            paper_name = TABLE1_PAPER_ROWS.get((run.objective, var_group(run.var_type)))
        why_nll, why_fid = table1_protocol(run, test, train, fid)
        if paper_name:
            p = paper_by_model[paper_name]
            row[C.PAPER_ROW] = paper_name
            compared = ([] if why_fid else [(C.DELTA_IS, C.IS, "IS"), (C.DELTA_FID, C.FID, "FID")]) + \
                ([] if why_nll else [(C.DELTA_NLL_TEST, C.NLL_TEST, "NLL_test"), (C.DELTA_NLL_TRAIN, C.NLL_TRAIN, "NLL_train")])
            for d, m, pk in compared:
                row[d] = delta(row[m], number(p[pk]))
        elif dataset_of(run.data) == "cifar10":
            why_nll = why_fid = ["no paper row with these training choices (eps, L_simple or L, fixed variance)"]
        reasons = list(dict.fromkeys(why_nll + why_fid))
        row[C.COMPARISON] = "comparable" if not reasons else "not comparable: " + "; ".join(reasons)
        i = len(rows)
        rows.append(row)
        if run.fid is not None:
            _add_cells(cells, i, row[C.MODEL], {C.IS: row[C.IS], C.IS_STD: row[C.IS_STD], C.FID: row[C.FID]},
                       fid_source(run))
        if run.nll_test is not None:
            _add_cells(cells, i, row[C.MODEL], {C.NLL_TEST: row[C.NLL_TEST], C.NLL_TEST_STDERR: row[C.NLL_TEST_STDERR]},
                       nll_source(run, run.nll_test))
        if run.nll_train is not None:
            _add_cells(cells, i, row[C.MODEL], {C.NLL_TRAIN: row[C.NLL_TRAIN],
                                                C.NLL_TRAIN_STDERR: row[C.NLL_TRAIN_STDERR]},
                       nll_source(run, run.nll_train))
    note = ("CIFAR-10. NLL in bits/dim (upper bounds: the variational bound), with standard errors over images; "
            "IS_std is the std over splits. FID of the paper is against the training set with 50,000 samples. "
            "delta_* = measured - paper row `paper_row`, only where the protocol matches the paper's (CIFAR-10, "
            "whole splits, 50,000 samples, the standard Inception, the paper row's training choices); otherwise "
            "`comparison` says why not.")
    frame = _frame(rows, C.TABLE1_COLUMNS)
    return Table("table1", "Table 1: CIFAR-10 results", frame, cells, note, display=table1_display(frame))


CIFAR10_SPLITS = {"test": 10_000, "train": 50_000}
PAPER_FID_SAMPLES = 50_000


def table1_protocol(run: RunInputs, test, train, fid) -> tuple[list[str], list[str]]:
    """Why the run's NLL and its IS/FID are not comparable with the paper's (empty lists: comparable)."""
    why_nll, why_fid = [], []
    if dataset_of(run.data) != "cifar10":
        why_nll.append(f"data {run.data}, not CIFAR-10")
        why_fid.append(f"data {run.data}, not CIFAR-10")
    for split, out in (("test", test), ("train", train)) if not why_nll else ():
        if out is not None and out.n_images != CIFAR10_SPLITS[split]:
            why_nll.append(f"NLL {split} on {out.n_images} images, not the whole split ({CIFAR10_SPLITS[split]:,})")
    if fid is not None:
        if fid.n_samples < PAPER_FID_SAMPLES:
            why_fid.append(f"FID of {fid.n_samples} samples, not {PAPER_FID_SAMPLES:,}")
        if not fid.comparable_to_paper:
            why_fid += [f"FID tool: {w}" for w in fid.warnings] or ["FID tool: not the paper's protocol"]
    return why_nll, why_fid


def _fmt(v: float, digits: int = 2) -> str:
    return "" if not np.isfinite(v) else f"{v:.{digits}f}"


def table1_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's four columns (model, IS, FID, NLL Test (Train)) and whether a measured row is compared."""
    rows = []
    for r in frame.to_dict("records"):
        measured = r[C.ORIGIN] == C.ORIGIN_MEASURED
        # a measured row: "NAME [SHORT IDENTITY]" (its training settings are in the CSV's model column)
        model = re.sub(r"^ddpm-bench: (.*?)(?: \[model (\w+)\])?(?: \(.*\))?$", lambda m: m[1] + (f" [{m[2]}]" if m[2] else ""),
                       r[C.MODEL]) if measured else r[C.MODEL]
        if r[C.CONDITIONAL] is True:
            model = f"{model} (conditional)"
        is_ = _fmt(r[C.IS]) + (f" ± {_fmt(r[C.IS_STD])}" if np.isfinite(r[C.IS_STD]) else "")
        bound = "≤ " if measured or r[C.MODEL].startswith(("Ours", "Diffusion")) else ""
        nll = f"{bound}{_fmt(r[C.NLL_TEST])}" if np.isfinite(r[C.NLL_TEST]) else ""
        if np.isfinite(r[C.NLL_TRAIN]):
            nll += f" ({_fmt(r[C.NLL_TRAIN])})"
        versus = ""
        if measured:
            deltas = [f"{name} {r[col]:+.2f}" for name, col in (("IS", C.DELTA_IS), ("FID", C.DELTA_FID),
                                                                 ("NLL", C.DELTA_NLL_TEST)) if np.isfinite(r[col])]
            versus = ", ".join(deltas) if deltas else "not comparable"
        rows.append(dict(zip(C.TABLE1_DISPLAY, (model, is_, _fmt(r[C.FID]), nll, versus), strict=True)))
    return pd.DataFrame(rows, columns=list(C.TABLE1_DISPLAY))


# -- Table 2 ------------------------------------------------------------------------------------------------

def table2(runs: list[RunInputs], values: dict | None = None) -> Table:
    """Table 2 (ablation): mean parameterisation x objective x variance, paper IS/FID beside the runs'."""
    values = values or paper_values()
    paper_rows = paper_table_rows("table2_ablation", values)
    key = (C.MEAN_TYPE, C.OBJECTIVE, C.VAR_TYPE)
    grid_runs = [r for r in runs if r.objective is not None]
    rows, cells = [], []

    def measured_row(run: RunInputs, paper: dict | None) -> dict:
        fid = run.fid.output if run.fid else None
        row = {C.MEAN_TYPE: run.mean_type, C.OBJECTIVE: run.objective, C.VAR_TYPE: var_group(run.var_type),
               C.VAR_TYPE_RUN: run.var_type, C.DATA: run.data, C.IS: number(fid and fid.is_mean),
               C.IS_STD: number(fid and fid.is_std), C.FID: number(fid and fid.fid),
               C.SOURCE: _files_used(run, run.path / RunConfigFile.FILE if run.config else None,
                                     run.fid and run.fid.file)}
        if paper is not None:
            row.update({C.PAPER_IS: number(paper["IS"]), C.PAPER_IS_STD: number(paper["IS_std"]),
                        C.PAPER_FID: number(paper["FID"])})
            if not table1_protocol(run, None, None, fid)[1]:  # the paper's FID protocol: deltas
                row[C.DELTA_IS] = delta(row[C.IS], row[C.PAPER_IS])
                row[C.DELTA_FID] = delta(row[C.FID], row[C.PAPER_FID])
        return row

    def add(row: dict, run: RunInputs | None) -> None:
        i = len(rows)
        rows.append(row)
        if run is not None and run.fid is not None:
            label = "/".join(str(row[k]) for k in key) + f" ({run.label})"
            _add_cells(cells, i, label, {C.IS: row[C.IS], C.IS_STD: row[C.IS_STD], C.FID: row[C.FID]}, fid_source(run))

    matched = set()
    for p in paper_rows:
        mine = [r for r in grid_runs if (r.mean_type, r.objective, var_group(r.var_type)) ==
                (p["mean_type"], p["objective"], p["var_type"])]
        if not mine:
            add({C.MEAN_TYPE: p["mean_type"], C.OBJECTIVE: p["objective"], C.VAR_TYPE: p["var_type"],
                 C.PAPER_IS: number(p["IS"]), C.PAPER_IS_STD: number(p["IS_std"]), C.PAPER_FID: number(p["FID"]),
                 C.SOURCE: PAPER_SOURCE}, None)
        for run in mine:
            matched.add(id(run))
            add(measured_row(run, p), run)
    for run in grid_runs:
        if id(run) not in matched:
            add(measured_row(run, None), run)
    note = ("CIFAR-10 ablation of the reverse-process parameterisation. var_type groups fixed-large and "
            "fixed-small as the paper's \"fixed\"; var_type_run is the run's own. Empty paper cells were unstable "
            "to train in the paper; empty measured cells were not measured. Runs without config.json (no "
            "training objective) are not in this table.")
    frame = _frame(rows, C.TABLE2_COLUMNS)
    display = pd.DataFrame({
        "Objective": [f"{m}, {o}, {v}" + (f" ({vr})" if isinstance(vr, str) and vr else "") + (f" [{d}]" if
                      isinstance(d, str) and d else "") for m, o, v, vr, d in
                      zip(frame[C.MEAN_TYPE], frame[C.OBJECTIVE], frame[C.VAR_TYPE], frame[C.VAR_TYPE_RUN],
                          frame[C.DATA], strict=True)],
        "IS": [_fmt(a) + (f" ± {_fmt(b)}" if np.isfinite(b) else "") for a, b in zip(frame[C.IS], frame[C.IS_STD],
                                                                                     strict=True)],
        "FID": [_fmt(v) for v in frame[C.FID]],
        "paper IS": [_fmt(a) + (f" ± {_fmt(b)}" if np.isfinite(b) else "") for a, b in
                     zip(frame[C.PAPER_IS], frame[C.PAPER_IS_STD], strict=True)],
        "paper FID": [_fmt(v) for v in frame[C.PAPER_FID]]})
    return Table("table2", "Table 2: ablation (IS and FID)", frame, cells, note, display=display)


# -- Table 3 ------------------------------------------------------------------------------------------------

def _table3_column(run: RunInputs) -> str | None:
    """The Table 3 column of a run whose FID reference (else data) is LSUN or CelebA-HQ; None otherwise."""
    dataset = dataset_of(run.fid.output.ref if run.fid else None) or dataset_of(run.data)
    return TABLE3_COLUMN_OF.get(dataset)


def table3(runs: list[RunInputs], values: dict | None = None) -> Table:
    """Table 3: FID on LSUN (256x256) and CelebA-HQ; the runs' rows where their data is one of these."""
    values = values or paper_values()
    paper_rows = paper_table_rows("table3_lsun_fid", values)
    celebahq = number(values["table3_lsun_fid"].get("celebahq_256_fid"))
    rows, cells = [], []
    for r in paper_rows:
        row = {C.MODEL: r["model"], C.ORIGIN: C.ORIGIN_PAPER, C.SOURCE: PAPER_SOURCE}
        row.update({col: number(r.get(col)) for col in (C.LSUN_BEDROOM, C.LSUN_CHURCH, C.LSUN_CAT)})
        if r["model"] == TABLE3_PAPER_ROW:
            row[C.CELEBAHQ] = celebahq
        rows.append(row)
    paper_ours = next(r for r in rows if r[C.MODEL] == TABLE3_PAPER_ROW)
    for run in runs:
        if run.fid is None:
            continue
        column = _table3_column(run)
        if column is None:
            continue
        row = {C.MODEL: run_label(run), C.ORIGIN: C.ORIGIN_MEASURED, column: number(run.fid.output.fid),
               C.SOURCE: _files_used(run, run.fid.file)}
        if run.objective == "L_simple":
            row[C.PAPER_ROW] = TABLE3_PAPER_ROW
            row[C.DELTA_FID] = delta(row[column], number(paper_ours.get(column)))
        i = len(rows)
        rows.append(row)
        _add_cells(cells, i, row[C.MODEL], {column: row[column]}, fid_source(run))
    note = ("FID (50,000 samples in the paper) on 256x256 LSUN and CelebA-HQ. The paper reports no CelebA-HQ FID "
            "in this table. Measured rows appear only for runs whose FID reference or data is one of these sets.")
    frame = _frame(rows, C.TABLE3_COLUMNS)
    display = frame[[C.MODEL, *C.TABLE3_DATASETS]].copy()
    display[C.MODEL] = display[C.MODEL].str.removeprefix("ddpm-bench: ")
    for col in C.TABLE3_DATASETS:
        display[col] = [_fmt(v) for v in frame[col]]
    return Table("table3", "Table 3: FID on LSUN and CelebA-HQ", frame, cells, note, display=display)


# -- Table 4 ------------------------------------------------------------------------------------------------

def table4_frame(curve: RateDistortionCurve) -> pd.DataFrame:
    """Table 4 of one curve: reverse times T, 0.9T, ..., 0.1T; the paper's columns filled when T = 1000."""
    rows = table4_rows(curve)
    paper_rate, paper_rmse = paper_table4_columns(rows.reverse_time, curve.T)
    df = pd.DataFrame({C.REVERSE_TIME: rows.reverse_time, C.RATE_BPD: rows.rate_bpd, C.RMSE: rows.rmse,
                       C.PAPER_RATE_BPD: paper_rate, C.PAPER_RMSE: paper_rmse})
    df[C.DELTA_RATE_BPD] = df[C.RATE_BPD] - df[C.PAPER_RATE_BPD]
    df[C.DELTA_RMSE] = df[C.RMSE] - df[C.PAPER_RMSE]
    return df[list(C.TABLE4_COLUMNS)]


def curve_frame(curve: RateDistortionCurve) -> pd.DataFrame:
    """Every t = T..1 (reverse time 1..T): the columns of curve.csv."""
    return pd.DataFrame({C.T: curve.t, C.REVERSE_TIME: curve.reverse_time, C.RATE_BPD: curve.rate_bpd,
                         C.RMSE: curve.rmse, C.RMSE_PER_IMAGE: curve.rmse_per_image})[list(C.CURVE_COLUMNS)]


def table4(curves: list[tuple[RunInputs, RateDistortionCurve, dict]]) -> Table:
    """Table 4 of every run with a rate-distortion curve, stacked; `source` names the run and file, the cells'
    provenance the model identity."""
    frames, cells = [], []
    offset = 0
    for run, curve, origin in curves:
        df = table4_frame(curve)
        of = run.rate_distortion or run.nll_test
        if of is None or (of.output.data, of.output.n_images) != ("cifar10:test", CIFAR10_SPLITS["test"]):
            df[[C.DELTA_RATE_BPD, C.DELTA_RMSE]] = math.nan  # the paper's columns are of the whole CIFAR-10 test set
        df[C.SOURCE] = _files_used(run, origin.get("file")) + (f" (model {run.model.short()})" if run.model else "")
        for j, s in enumerate(df[C.REVERSE_TIME]):
            _add_cells(cells, offset + j, f"{run.label} s={s}",
                       {C.RATE_BPD: float(df[C.RATE_BPD].iloc[j]), C.RMSE: float(df[C.RMSE].iloc[j])}, origin)
        offset += len(df)
        frames.append(df)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(C.TABLE4_REPORT_COLUMNS))
    note = ("Rate L_T + sum_{k=t}^{T-1} L_k (bits/dim) and distortion RMSE of x0_hat(x_t) on [0, 255] at reverse "
            "time s = T - t + 1 (paper §4.3). Paper columns only for T = 1000 (CIFAR-10 test set); deltas only for "
            "a bound on the whole CIFAR-10 test set.")
    frame = frame[list(C.TABLE4_REPORT_COLUMNS)]
    display = pd.DataFrame({
        "Reverse process steps (T - t)": [str(int(v)) for v in frame[C.REVERSE_TIME]],
        "Rate (bits/dim)": [_fmt(a, 3) + (f" [{_fmt(b, 3)}]" if np.isfinite(b) else "")
                            for a, b in zip(frame[C.RATE_BPD], frame[C.PAPER_RATE_BPD], strict=True)],
        "Distortion (RMSE [0, 255])": [_fmt(a, 3) + (f" [{_fmt(b, 3)}]" if np.isfinite(b) else "")
                                       for a, b in zip(frame[C.RMSE], frame[C.PAPER_RMSE], strict=True)],
        "Model": [s.split("(model ")[-1].rstrip(")") if "(model " in s else "" for s in frame[C.SOURCE].astype(str)]})
    return Table("table4", "Table 4: rate and distortion along the reverse process", frame, cells,
                 note + " The Markdown shows the paper's value in brackets.", display=display)


# -- writing ------------------------------------------------------------------------------------------------

def _md_cell(v):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return MD_FLOAT_FORMAT.format(float(v))
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub Markdown; missing values are empty cells (never "nan" or 0)."""
    body = [[_md_cell(v) for v in row] for row in df.itertuples(index=False, name=None)]
    align = ["right" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) else "left"
             for c in df.columns]
    return tabulate(body, headers=list(df.columns), tablefmt="github", disable_numparse=True, colalign=align) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """CSV with full float precision; missing values are empty fields."""
    return df.to_csv(index=False, na_rep="", lineterminator="\n")


def write_frame(df: pd.DataFrame, stem: str | Path, markdown: pd.DataFrame | None = None) -> list[str]:
    """`stem`.csv and `stem`.md (of `markdown` when given: a compact view of `df`), atomically."""
    csv_path, md_path = f"{stem}.csv", f"{stem}.md"
    atomic_write_text(csv_path, to_csv(df))
    atomic_write_text(md_path, to_markdown(df if markdown is None else markdown))
    return [csv_path, md_path]


def write_table(table: Table, out_dir: str | Path) -> list[str]:
    """`name`.csv, `name`.md and `name`.sources.json (the provenance of every measured cell)."""
    out_dir = Path(out_dir)
    paths = write_frame(table.frame, out_dir / table.name, markdown=table.display)
    src = out_dir / f"{table.name}.sources.json"
    atomic_write_json(src, {"table": table.name, "title": table.title, "note": table.note,
                            "paper_values": PAPER_VALUES_NAME, "cells": table.cells})
    return [*paths, str(src)]
