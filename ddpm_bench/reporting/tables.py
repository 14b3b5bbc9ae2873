"""Tables 1-4 of Ho et al. (2020) with the measured values beside the paper's (pandas -> CSV, tabulate -> Markdown).

Every table is a DataFrame whose columns are constants of `reporting.columns`. A measured value the runs do
not have is NaN in the frame, an empty cell in the CSV and in the Markdown; it is never filled in. Each
measured cell has an entry in the table's companion `*.sources.json` (run directory, file, the identity of
the model that produced it, sample or image count, estimator or backend, data and split), and each row a
short `source`. Paths are relative to the report's folder (`reporting.paths.RelativeTo`). A measured row
holds the outputs of one model identity only (`reporting.inputs.split_by_model`) and its label names that
identity (short sha256).

Tables 1 and 2 are the paper's CIFAR-10 tables: a run on another data set is never a row of them but of a
table of its own, titled with its data set, beside the paper's rows for context (`Block`). `delta_*`
columns are measured minus paper, filled only where both exist and the paper's protocol applies (same
data set, whole splits, the paper row's training choices; Table 4: `table4_comparison`).

Table 1 shows, for each split, the run's most precise nll output of each quantity (`NLL_QUANTITIES`:
the bound, "≤"; a likelihood would get its own columns), with its image count and estimator.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ddpm_bench.data import source_split
from ddpm_bench.estimators import column_of
from ddpm_bench.identity import ModelIdentity
from ddpm_bench.outputs import FidMetrics, NllSummary, RunConfigFile, feature_extractor_of
from ddpm_bench.rate_distortion_curve import RateDistortionCurve, table4_rows
from ddpm_bench.reporting import columns as C
from ddpm_bench.reporting.inputs import Part, RunInputs, dataset_name, dataset_of
from ddpm_bench.reporting.paper import (
    PAPER_T,
    PAPER_VALUES_NAME,
    paper_table4_columns,
    paper_table_rows,
    paper_values,
)
from ddpm_bench.reporting.paths import RelativeTo
from ddpm_bench.reporting.verdict import gap_verdict
from ddpm_bench.shards import atomic_write_json, atomic_write_text

PAPER_SOURCE = f"paper ({PAPER_VALUES_NAME})"
MD_FLOAT_FORMAT = "{:.6g}"
MD_WIDTH = 110  # notes in the Markdown files are wrapped to this width
CIFAR10 = "cifar10"  # `inputs.dataset_of` name of the paper's data set of Tables 1, 2 and 4

# the paper's Table 1 row each training choice is compared with (CIFAR-10 only): (objective, var group)
TABLE1_PAPER_ROWS = {("L_simple", "fixed"): "Ours (L_simple)", ("L", "fixed"): "Ours (L, fixed isotropic Sigma)"}
# Table 3: the paper's data set columns by `inputs.dataset_of` name
TABLE3_COLUMN_OF = {"lsun_bedroom": C.LSUN_BEDROOM, "lsun_church": C.LSUN_CHURCH, "lsun_cat": C.LSUN_CAT,
                    "celebahq": C.CELEBAHQ}
TABLE3_PAPER_ROW = "Ours (L_simple)"


@dataclass
class Block:
    """One table a person reads (in the .md file and report.md): an optional heading, the rows, and notes
    under it (one line each)."""

    heading: str | None
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)


@dataclass
class Table:
    """A report table: the frame (the CSV), the provenance of its measured cells, a note on how to read it,
    what a person reads (`blocks`), why its measured rows are not comparable with the paper (`notes`, each
    reason once), and why report.md leaves it out (`left_out`, None: shown)."""

    name: str  # file stem: table1 .. table4
    title: str
    frame: pd.DataFrame
    cells: list[dict] = field(default_factory=list)  # {"row", "row_label", "column", "value", "from": {...}}
    note: str = ""
    blocks: list[Block] = field(default_factory=list)  # empty: the frame itself
    notes: list[str] = field(default_factory=list)
    left_out: str | None = None


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


def short_label(run: RunInputs) -> str:
    """"NAME [SHORT-IDENTITY]": a measured row as the Markdown tables and notes name it."""
    return run.name + (f" [{run.model.short()}]" if run.model is not None else "")


def display_name(label: str) -> str:
    """A measured row's label as the Markdown shows it: "NAME [SHORT IDENTITY]" (the training settings of
    Table 1's "ddpm-bench: NAME [model ID] (SETTINGS)" are in the CSV's model column)."""
    if label.startswith("ddpm-bench: "):
        return re.sub(r"^ddpm-bench: (.*?)(?: \[model (\w+)\])?(?: \(.*\))?$",
                      lambda m: m[1] + (f" [{m[2]}]" if m[2] else ""), label)
    return re.sub(r"\[model (\w+)\]", r"[\1]", label)


def rows_text(labels: list[str]) -> str:
    """Row labels as one: "NAME [ID]" for one row, "NAME [ID], s = 1000 … 100" for a run's Table 4 rows,
    "N rows: FIRST … LAST" otherwise."""
    names = list(dict.fromkeys(display_name(x) for x in labels))
    if len(names) == 1:
        return names[0]
    steps = [re.fullmatch(r"(.*) s=(\d+)", x) for x in names]
    if all(steps) and len({m[1] for m in steps}) == 1:
        return f"{display_name(steps[0][1])}, s = {steps[0][2]} … {steps[-1][2]}"
    return f"{len(names)} rows: {names[0]} … {names[-1]}"


def is_cifar10(run: RunInputs) -> bool:
    return dataset_of(run.data) == CIFAR10


def model_source(identity: ModelIdentity | None, where: RelativeTo) -> dict:
    """The model a value belongs to: its identity (sha256 of weights, ema/raw and diffusion settings; not
    the checkpoint file's hash), whether that identity is strong, and where the model was found."""
    if identity is None:
        return {"model_identity": None}
    return {"model_identity": identity.sha256, "model_identity_strong": identity.strong,
            "model": where.text(identity.origin), "weights": identity.weights}


def nll_source(run: RunInputs, nll: Part[NllSummary], where: RelativeTo) -> dict:
    s = nll.output
    bound = {k: getattr(s, k, None) for k in ("draws", "clip", "decoder_cdf")}  # the bound's settings
    return {"run_dir": where.path(run.path), "file": where.path(nll.file), "produced_by": "ddpm-bench nll",
            "run_id": s.run_id, **model_source(nll.identity, where), "estimator": s.estimator,
            "quantity": s.quantity, "n_images": s.n_images, "data": where.text(s.data),
            "split": source_split(s.data), "seed": s.seed, **bound, "T": s.T, "precision": s.precision}


def fid_source(run: RunInputs, where: RelativeTo) -> dict:
    m = run.fid.output
    fe_name, fe_sha256 = feature_extractor_of(m)
    return {"run_dir": where.path(run.path), "file": where.path(run.fid.file),
            "produced_by": "ddpm-bench fid", "run_id": m.run_id, **model_source(run.fid.identity, where),
            "n_samples": m.n_samples, "n_ref": m.n_ref, "ref": where.text(m.ref), "split": source_split(m.ref),
            "backend": m.backend,
            "feature_extractor": fe_name, "feature_extractor_sha256": fe_sha256}


def _files_used(run: RunInputs, where: RelativeTo, *paths: Path | str | None) -> str:
    """"NAME: FILE, ...": the run by its name, the files it read relative to the report."""
    used = [where.path(p) for p in paths if p is not None]
    return f"{run.name}: {', '.join(used)}" if used else ""


def _add_cells(cells: list[dict], row: int, label: str, values: dict, origin: dict) -> None:
    for column, value in values.items():
        if np.isfinite(value):
            cells.append({"row": row, "row_label": label, "column": column, "value": value, "from": origin})


def _frame(rows: list[dict], cols: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(cols))


def once(notes: list[tuple[str, str]], labelled: bool) -> list[str]:
    """(row label, note) pairs as a list of each note once; with `labelled`, the rows it is about after it."""
    rows: dict[str, list[str]] = {}
    for label, note in notes:
        rows.setdefault(note, [])
        if label not in rows[note]:
            rows[note].append(label)
    return [note + (f" ({', '.join(labels)})" if labelled else "") for note, labels in rows.items()]


def _without_verdict(warning: str) -> str:
    """A FID tool warning without its "not comparable to the paper" (the list it is shown in says so)."""
    return re.sub(r"[;:,]?\s*not comparable to the paper", "", warning).strip()


def fid_protocol(fid: FidMetrics) -> list[str]:
    """Why a FID (and its IS) is not the paper's protocol, short, each reason once: the FID tool's own
    warnings, else the sample count."""
    why = [f"FID: {_without_verdict(w)}" for w in fid.warnings]
    if not why and fid.n_samples < PAPER_FID_SAMPLES:
        why.append(f"FID of {fid.n_samples:,} samples, not {PAPER_FID_SAMPLES:,}")
    if not why and not fid.comparable_to_paper:
        why.append("FID: not the paper's protocol")
    return list(dict.fromkeys(why))


def inception_fid(run: RunInputs) -> FidMetrics | None:
    """The run's metrics when they are FID and IS (the FID Inception's features); None otherwise: another
    extractor's scores never stand in a FID or IS column (`other_features_note` shows them)."""
    return run.fid.output if run.fid is not None and run.fid.output.scores_are_fid_is else None


def other_features_note(run: RunInputs) -> str | None:
    """The scores of a run whose features are not the FID Inception's, with what they are (None otherwise)."""
    if run.fid is None or run.fid.output.scores_are_fid_is:
        return None
    m = run.fid.output
    score = f" and classifier score {m.is_mean:.2f}" if m.is_mean is not None else ""
    return (f"FID and IS are empty: {run.fid.file.name} holds the Frechet distance {m.fid:.2f}{score} of "
            f"{m.extractor_name} features (a test network, not the Inception of FID and IS), which are not "
            "FID or IS and are never compared with the paper's")


def is_note(run: RunInputs) -> str | None:
    """Why the IS cell of a run with a FID is empty (metrics.json's `is_reason`); None when it has an IS."""
    fid = inception_fid(run)
    if fid is None or fid.is_mean is not None:
        return None
    return f"IS is empty: {fid.is_reason or f'{run.fid.file.name} gives no Inception Score'}"


# -- Table 1 ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NllColumns:
    """The CSV columns of one split of one quantity."""

    value: str
    stderr: str
    n: str
    estimator: str
    delta: str | None  # measured - paper (None: the paper has no number of this quantity)


@dataclass(frozen=True)
class NllQuantity:
    """Where Table 1 shows the nll outputs of one estimand (the estimators whose `COLUMN` is `quantity`):
    its own columns, never another's. Each split's cell is the run's most precise output of it
    (`RunInputs.best_nll`)."""

    quantity: str  # an estimator's COLUMN (ddpm_bench.estimators.column_of)
    show: str  # its column in the Markdown table
    prefix: str  # before a measured value in that column: "≤ " for an upper bound
    words: str  # what it is, in the notes
    test: NllColumns
    train: NllColumns

    def splits(self) -> tuple[tuple[str, NllColumns], ...]:
        return (("test", self.test), ("train", self.train))


NLL_QUANTITIES = (
    NllQuantity("bound", C.SHOW_NLL_BOUND, "≤ ", "the variational bound, an upper bound",
                NllColumns(C.NLL_TEST, C.NLL_TEST_STDERR, C.NLL_TEST_N, C.NLL_TEST_ESTIMATOR,
                           C.DELTA_NLL_TEST),
                NllColumns(C.NLL_TRAIN, C.NLL_TRAIN_STDERR, C.NLL_TRAIN_N, C.NLL_TRAIN_ESTIMATOR,
                           C.DELTA_NLL_TRAIN)),
    NllQuantity("continuous", C.SHOW_NLL_CONTINUOUS, "≤ ", "the continuous-time bound (VDM) of the model, an upper "
                "bound over its continuous noise levels; another quantity than the discrete bound",
                NllColumns(C.NLL_CONT_TEST, C.NLL_CONT_TEST_STDERR, C.NLL_CONT_TEST_N, C.NLL_CONT_TEST_ESTIMATOR,
                           None),
                NllColumns(C.NLL_CONT_TRAIN, C.NLL_CONT_TRAIN_STDERR, C.NLL_CONT_TRAIN_N, C.NLL_CONT_TRAIN_ESTIMATOR,
                           None)),
    NllQuantity("likelihood", C.SHOW_NLL_ODE, "", "the probability-flow ODE likelihood (not the variational bound: "
                "an estimate, by probe and solver, of the dequantized density, itself an upper bound on the "
                "discrete data's -log P)",
                NllColumns(C.NLL_ODE_TEST, C.NLL_ODE_TEST_STDERR, C.NLL_ODE_TEST_N, C.NLL_ODE_TEST_ESTIMATOR, None),
                NllColumns(C.NLL_ODE_TRAIN, C.NLL_ODE_TRAIN_STDERR, C.NLL_ODE_TRAIN_N, C.NLL_ODE_TRAIN_ESTIMATOR,
                           None)),
)
PAPER_NLL = NLL_QUANTITIES[0]  # the paper's NLL columns hold its bounds (and other models' likelihoods)
NLL_COUNT_COLUMNS = tuple(c.n for q in NLL_QUANTITIES for _, c in q.splits())


def _nll_cells(run: RunInputs, q: NllQuantity,
               where: RelativeTo) -> tuple[dict, list[tuple[dict, dict]], str | None]:
    """The row's columns of quantity `q`, their cells with provenance, and a note naming what they show."""
    row, cells, shown = {}, [], []
    for split, cols in q.splits():
        part = run.best_nll(split, q.quantity)
        if part is None:
            continue
        s = part.output
        row.update({cols.value: s.total_bpd, cols.stderr: number(s.total_bpd_stderr), cols.n: s.n_images,
                    cols.estimator: s.estimator})
        cells.append(({cols.value: row[cols.value], cols.stderr: row[cols.stderr]},
                      nll_source(run, part, where)))
        of = len([p for p in run.nll_outputs(split) if column_of(p.output) == q.quantity])
        shown.append(f"{split} from `{part.folder.name}/`, {s.n_images:,} images, estimator {s.estimator}"
                     + (f" (the most precise of its {of})" if of > 1 else ""))
    note = (f"NLL ({q.words}): " + "; ".join(shown)) if shown else None
    return row, cells, note


def _unshown_quantities(run: RunInputs) -> list[str]:
    """Notes on nll outputs of a quantity Table 1 has no columns for: never shown in another's cells."""
    known = {q.quantity for q in NLL_QUANTITIES}
    return [f"`{p.folder.name}/` holds a {p.output.quantity!r} ({p.output.estimator}), which Table 1 has no "
            "column for: not shown" for split in ("test", "train") for p in run.nll_outputs(split)
            if column_of(p.output) not in known]


def table1(runs: list[RunInputs], values: dict | None = None, where: RelativeTo | None = None) -> Table:
    """Table 1: IS, FID, NLL test (train) in bits/dim with standard errors; paper rows (CIFAR-10) first, then
    the runs'. In the Markdown, runs on another data set are a table of their own (`Block`)."""
    values = values or paper_values()
    where = where or RelativeTo(Path.cwd())
    paper_rows = paper_table_rows("table1_cifar10", values)
    paper_by_model = {r["model"]: r for r in paper_rows if not r["conditional"]}
    rows, cells, notes, why = [], [], {}, []
    for r in paper_rows:
        rows.append({C.MODEL: r["model"], C.ORIGIN: C.ORIGIN_PAPER, C.DATA: CIFAR10,
                     C.CONDITIONAL: r["conditional"], C.IS: number(r["IS"]), C.IS_STD: number(r["IS_std"]),
                     C.FID: number(r["FID"]), C.NLL_TEST: number(r["NLL_test"]),
                     C.NLL_TRAIN: number(r["NLL_train"]), C.SOURCE: PAPER_SOURCE})
    shown = [run for run in runs  # an LSUN / CelebA-HQ run belongs to Table 3
             if (run.fid is not None or run.nll_outputs("test") or run.nll_outputs("train"))
             and _table3_column(run) is None]
    for run in shown:
        fid = inception_fid(run)
        label = short_label(run)
        row = {C.MODEL: run_label(run), C.ORIGIN: C.ORIGIN_MEASURED, C.DATA: where.text(run.data),
               C.CONDITIONAL: False, C.IS: number(fid and fid.is_mean), C.IS_STD: number(fid and fid.is_std),
               C.FID: number(fid and fid.fid)}
        row_notes, nll_cells = [], []
        for q in NLL_QUANTITIES:
            q_row, q_cells, q_note = _nll_cells(run, q, where)
            row.update(q_row)
            nll_cells += q_cells
            row_notes += [q_note] if q_note else []
        row_notes += _unshown_quantities(run)
        test, train = run.best_nll("test", PAPER_NLL.quantity), run.best_nll("train", PAPER_NLL.quantity)
        row[C.SOURCE] = _files_used(run, where, *(p.file for p in (run.fid, test, train) if p))
        if run.nll_unknown_split and run.nll_test is not None:
            data = where.text(run.nll_test.output.data)
            row[C.SOURCE] += f" (data {data} is no :train/:test split; shown as test)"
        paper_name = None
        if is_cifar10(run) and run.mean_type in (None, "eps"):
            paper_name = TABLE1_PAPER_ROWS.get((run.objective, var_group(run.var_type)))
        why_nll, why_fid = table1_protocol(run, test and test.output, train and train.output, fid, where)
        if paper_name:
            p = paper_by_model[paper_name]
            row[C.PAPER_ROW] = paper_name
            compared = ([] if why_fid else [(C.DELTA_IS, C.IS, "IS"), (C.DELTA_FID, C.FID, "FID")]) + \
                ([] if why_nll else [(c.delta, c.value, f"NLL_{split}") for split, c in PAPER_NLL.splits()])
            for d, m, pk in compared:
                row[d] = delta(row.get(m, math.nan), number(p[pk]))
        elif is_cifar10(run):
            why_nll = why_fid = ["no paper row with these training choices (eps, L_simple or L, fixed variance)"]
        reasons = list(dict.fromkeys(why_nll + why_fid))
        row[C.COMPARISON] = "comparable" if not reasons else "not comparable: " + "; ".join(reasons)
        why += [(label, r) for r in reasons]
        row_notes += [n for n in (is_note(run), other_features_note(run)) if n is not None]
        if run.gap is not None:
            row_notes.append(f"gap: {gap_verdict(run.gap.output)}")
        notes[len(rows)] = [f"{label}: {n}" for n in row_notes]
        i = len(rows)
        rows.append(row)
        if fid is not None:
            _add_cells(cells, i, row[C.MODEL], {C.IS: row[C.IS], C.IS_STD: row[C.IS_STD], C.FID: row[C.FID]},
                       fid_source(run, where))
        for values_, origin in nll_cells:
            _add_cells(cells, i, row[C.MODEL], values_, origin)
    note = ("NLL in bits/dim with standard errors over images: the run's most precise output of each split, "
            "its image count and estimator in the CSV (`NLL_test_n`, `NLL_test_estimator`); \"≤\": an upper "
            "bound (the variational bound). IS_std is the std over splits. The paper's rows are CIFAR-10, "
            "its FID against the training set with 50,000 samples. delta_* = measured - paper row "
            "`paper_row`, only where the protocol matches the paper's (CIFAR-10, whole splits, 50,000 "
            "samples, the standard Inception, the paper row's training choices); otherwise `comparison` says "
            f"why not. A measured FID is shown to {FidMetrics.SHOWN_DIGITS} decimal (the digits that reproduce "
            "across machines: its features pass through float32 convolutions), every digit in the CSV.")
    frame = _frame(rows, C.TABLE1_COLUMNS)
    for col in NLL_COUNT_COLUMNS:
        frame[col] = frame[col].astype("Int64")
    display = table1_display(frame)
    blocks, title = _dataset_blocks(frame, display, notes, "Table 1", "results", "")
    return Table("table1", title, frame, cells, note, blocks=blocks,
                 notes=once(why, labelled=len(shown) > 1))


def _dataset_blocks(frame: pd.DataFrame, display: pd.DataFrame, notes: dict[int, list[str]], name: str,
                    what: str, tail: str, paper_only: list[str] | None = None) -> tuple[list[Block], str]:
    """The Markdown blocks of a table whose paper rows are CIFAR-10: the paper's rows with the CIFAR-10
    runs, and one block per other data set (its runs only); and the table's title ("NAME: ... WHAT ...
    TAIL"), which says CIFAR-10 only for CIFAR-10 runs. `paper_only`: display columns a block without
    paper rows leaves out."""
    if C.ORIGIN in frame:
        measured = frame[C.ORIGIN].eq(C.ORIGIN_MEASURED)
    else:
        measured = frame[C.SOURCE].ne(PAPER_SOURCE)
    data = frame[C.DATA].where(measured, None)
    others: dict[str, list[int]] = {}
    for i, d in data.items():
        if measured[i] and dataset_of(d) != CIFAR10:
            others.setdefault(dataset_name(d) or "unknown data", []).append(i)
    other_rows = {i for rows in others.values() for i in rows}
    cifar = [i for i in frame.index if i not in other_rows]
    cifar_runs = bool(measured[cifar].any())

    def block(heading: str | None, idx: list[int], drop: list[str] | None = None) -> Block:
        shown = display.loc[idx].reset_index(drop=True)
        return Block(heading, shown.drop(columns=drop) if drop else shown,
                     [n for i in idx for n in notes.get(i, [])])

    if not others:
        return [block(None, cifar)], f"{name}: CIFAR-10 {what}{tail}"
    names = list(others)
    blocks = [block(f"Measured on {d} (not CIFAR-10: no row here is comparable with the paper's)", others[d],
                    paper_only) for d in names]
    blocks.append(block("The paper's CIFAR-10 " + (f"{what} and the runs on CIFAR-10" if cifar_runs else
                                                    f"{what}, for context"), cifar))
    on = " and ".join([", ".join(names)] + (["CIFAR-10"] if cifar_runs else []))
    return blocks, f"{name}: {what} on {on}, beside the paper's CIFAR-10 {what}{tail}"


CIFAR10_SPLITS = {"test": 10_000, "train": 50_000}
PAPER_FID_SAMPLES = 50_000


def table1_protocol(run: RunInputs, test: NllSummary | None, train: NllSummary | None, fid: FidMetrics | None,
                    where: RelativeTo | None = None) -> tuple[list[str], list[str]]:
    """Why the run's NLL and its IS/FID are not comparable with the paper's (empty lists: comparable). A run
    on another data set has that one reason."""
    where = where or RelativeTo(Path.cwd())
    if not is_cifar10(run):
        why = [f"data {where.text(run.data)}, not CIFAR-10"]
        return why, why
    why_nll = [f"NLL {split} on {out.n_images:,} images, not the whole split ({CIFAR10_SPLITS[split]:,})"
               for split, out in (("test", test), ("train", train))
               if out is not None and out.n_images != CIFAR10_SPLITS[split]]
    return why_nll, [] if fid is None else fid_protocol(fid)


def _fmt(v: float, digits: int = 2) -> str:
    return "" if not np.isfinite(v) else f"{v:.{digits}f}"


def _nll_text(r: dict, q: NllQuantity, prefix: str) -> str:
    """"≤ 3.76 ± 0.03 (3.35)": test ± its standard error, train in brackets; "" when neither is there."""
    test, se = r.get(q.test.value, math.nan), r.get(q.test.stderr, math.nan)
    train = r.get(q.train.value, math.nan)
    text = ""
    if np.isfinite(test):
        text = f"{prefix}{_fmt(test)}" + (f" ± {_fmt(se)}" if np.isfinite(se) else "")
    if np.isfinite(train):
        text += (" " if text else prefix) + f"({_fmt(train)})"
    return text


def table1_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's columns (model, IS, FID, NLL Test (Train) and any other quantity's) and whether a
    measured row is compared."""
    rows = []
    for r in frame.to_dict("records"):
        measured = r[C.ORIGIN] == C.ORIGIN_MEASURED
        model = display_name(r[C.MODEL]) if measured else r[C.MODEL]
        if r[C.CONDITIONAL] is True:
            model = f"{model} (conditional)"
        is_ = _fmt(r[C.IS]) + (f" ± {_fmt(r[C.IS_STD])}" if np.isfinite(r[C.IS_STD]) else "")
        paper_bound = r[C.MODEL].startswith(("Ours", "Diffusion"))
        nll = {q.show: _nll_text(r, q, q.prefix if measured or (q is PAPER_NLL and paper_bound) else "")
               for q in NLL_QUANTITIES}
        versus = ""
        if measured:
            deltas = [f"{name} {r[col]:+.2f}" for name, col in (("IS", C.DELTA_IS), ("FID", C.DELTA_FID),
                                                                 ("NLL", C.DELTA_NLL_TEST)) if np.isfinite(r[col])]
            versus = ", ".join(deltas) if deltas else "not comparable"
        fid = _fmt(r[C.FID], FidMetrics.SHOWN_DIGITS if measured else 2)  # a measured FID: the digits that reproduce
        rows.append({C.SHOW_MODEL: model, C.SHOW_IS: is_, C.SHOW_FID: fid, **nll,
                     C.SHOW_VERSUS: versus})
    shown = pd.DataFrame(rows, columns=list(C.TABLE1_DISPLAY))
    # a quantity that no row has (the ODE likelihood, unless a run measured it) takes no column
    empty = [q.show for q in NLL_QUANTITIES if q is not PAPER_NLL and not shown[q.show].astype(bool).any()]
    return shown.drop(columns=empty)


# -- Table 2 ------------------------------------------------------------------------------------------------

def table2(runs: list[RunInputs], values: dict | None = None, where: RelativeTo | None = None) -> Table:
    """Table 2 (ablation): mean parameterisation x objective x variance, the paper's IS/FID (CIFAR-10) beside
    the CIFAR-10 runs'; runs on another data set in a table of their own, without the paper's values. A run
    without a FID (or without config.json: no training objective) has nothing to show here."""
    values = values or paper_values()
    where = where or RelativeTo(Path.cwd())
    paper_rows = paper_table_rows("table2_ablation", values)
    key = (C.MEAN_TYPE, C.OBJECTIVE, C.VAR_TYPE)
    grid_runs = [r for r in runs if r.objective is not None and inception_fid(r) is not None]
    rows, cells, notes, why, names = [], [], {}, [], {}

    def measured_row(run: RunInputs, paper: dict | None) -> dict:
        fid = inception_fid(run)
        row = {C.MEAN_TYPE: run.mean_type, C.OBJECTIVE: run.objective, C.VAR_TYPE: var_group(run.var_type),
               C.VAR_TYPE_RUN: run.var_type, C.DATA: where.text(run.data), C.IS: number(fid.is_mean),
               C.IS_STD: number(fid.is_std), C.FID: number(fid.fid),
               C.SOURCE: _files_used(run, where, run.path / RunConfigFile.FILE if run.config else None,
                                     run.fid.file)}
        if paper is not None:
            row.update({C.PAPER_IS: number(paper["IS"]), C.PAPER_IS_STD: number(paper["IS_std"]),
                        C.PAPER_FID: number(paper["FID"])})
            reasons = table1_protocol(run, None, None, fid, where)[1]
            why.extend((short_label(run), r) for r in reasons)
            if not reasons:  # the paper's FID protocol: deltas
                row[C.DELTA_IS] = delta(row[C.IS], row[C.PAPER_IS])
                row[C.DELTA_FID] = delta(row[C.FID], row[C.PAPER_FID])
        return row

    def add(row: dict, run: RunInputs | None) -> None:
        i = len(rows)
        rows.append(row)
        if run is not None:
            names[i] = short_label(run)
            label = "/".join(str(row[k]) for k in key) + f" ({run.label})"
            _add_cells(cells, i, label, {C.IS: row[C.IS], C.IS_STD: row[C.IS_STD], C.FID: row[C.FID]},
                       fid_source(run, where))
            if (note := is_note(run)) is not None:
                notes[i] = [f"{short_label(run)}: {note}"]

    matched = set()
    for p in paper_rows:
        mine = [r for r in grid_runs if is_cifar10(r) and (r.mean_type, r.objective, var_group(r.var_type)) ==
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
    note = ("Ablation of the reverse-process parameterisation (the paper's on CIFAR-10). var_type groups "
            "fixed-large and fixed-small as the paper's \"fixed\"; var_type_run is the run's own. Empty "
            "paper cells were unstable to train in the paper; empty measured cells were not measured. Runs "
            "without a FID (of the FID Inception's features) or without config.json (no training objective) are "
            "not in this table.")
    frame = _frame(rows, C.TABLE2_COLUMNS)

    def with_std(a: pd.Series, b: pd.Series) -> list[str]:
        return [_fmt(x) + (f" ± {_fmt(y)}" if np.isfinite(y) else "") for x, y in zip(a, b, strict=True)]

    display = pd.DataFrame({
        "Objective": [f"{m}, {o}, {v}" + (f" ({vr})" if isinstance(vr, str) and vr else "") +
                      (f": {names[i]}" if i in names else "") for i, (m, o, v, vr) in
                      enumerate(zip(frame[C.MEAN_TYPE], frame[C.OBJECTIVE], frame[C.VAR_TYPE],
                                    frame[C.VAR_TYPE_RUN], strict=True))],
        "IS": with_std(frame[C.IS], frame[C.IS_STD]),
        "FID": [_fmt(v, FidMetrics.SHOWN_DIGITS) for v in frame[C.FID]],
        "paper IS": with_std(frame[C.PAPER_IS], frame[C.PAPER_IS_STD]),
        "paper FID": [_fmt(v) for v in frame[C.PAPER_FID]]})
    blocks, title = _dataset_blocks(frame, display, notes, "Table 2", "ablation", " (IS and FID)",
                                    paper_only=["paper IS", "paper FID"])
    return Table("table2", title, frame, cells, note, blocks=blocks,
                 notes=once(why, labelled=len(grid_runs) > 1))


# -- Table 3 ------------------------------------------------------------------------------------------------

def _table3_column(run: RunInputs) -> str | None:
    """The Table 3 column of a run whose FID reference (else data) is LSUN or CelebA-HQ; None otherwise."""
    dataset = dataset_of(run.fid.output.ref if run.fid else None) or dataset_of(run.data)
    return TABLE3_COLUMN_OF.get(dataset)


def table3(runs: list[RunInputs], values: dict | None = None, where: RelativeTo | None = None) -> Table:
    """Table 3: FID on LSUN (256x256) and CelebA-HQ; the runs' rows where their data is one of these. Without
    such a run report.md leaves it out (`Table.left_out`); its files hold the paper's rows."""
    values = values or paper_values()
    where = where or RelativeTo(Path.cwd())
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
        fid = inception_fid(run)
        column = None if fid is None else _table3_column(run)
        if column is None:
            continue
        row = {C.MODEL: run_label(run), C.ORIGIN: C.ORIGIN_MEASURED, column: number(fid.fid),
               C.SOURCE: _files_used(run, where, run.fid.file)}
        if run.objective == "L_simple":
            row[C.PAPER_ROW] = TABLE3_PAPER_ROW
            row[C.DELTA_FID] = delta(row[column], number(paper_ours.get(column)))
        i = len(rows)
        rows.append(row)
        _add_cells(cells, i, row[C.MODEL], {column: row[column]}, fid_source(run, where))
    note = ("FID (50,000 samples in the paper) on 256x256 LSUN and CelebA-HQ. The paper reports no CelebA-HQ FID "
            "in this table. Measured rows appear only for runs whose FID reference or data is one of these sets.")
    frame = _frame(rows, C.TABLE3_COLUMNS)
    display = frame[[C.MODEL, *C.TABLE3_DATASETS]].copy()
    display[C.MODEL] = display[C.MODEL].str.removeprefix("ddpm-bench: ")
    for col in C.TABLE3_DATASETS:
        display[col] = [_fmt(v) for v in frame[col]]
    left_out = None if cells else ("Table 3 (FID on LSUN and CelebA-HQ) is left out: no input measured those "
                                   "data sets (table3.csv holds the paper's values).")
    return Table("table3", "Table 3: FID on LSUN and CelebA-HQ", frame, cells, note,
                 blocks=[Block(None, display)], left_out=left_out)


# -- Table 4 ------------------------------------------------------------------------------------------------

def table4_comparison(data: str | None, n_images: int | None, T: int) -> list[str]:
    """Why a rate-distortion table is not comparable with the paper's Table 4 (empty: it is, and its deltas
    are shown): the paper's is of the bound on the whole CIFAR-10 test set with T = 1000. The one rule of
    `rate-distortion`'s table4.csv/.md and of the report."""
    why = []
    if T != PAPER_T:
        why.append(f"T = {T}, not {PAPER_T}")
    if dataset_of(data) != CIFAR10 or source_split(data) != "test":
        why.append(f"data {data}, not the CIFAR-10 test set")
    elif n_images != CIFAR10_SPLITS["test"]:
        why.append(f"{n_images:,} images, not the whole CIFAR-10 test set ({CIFAR10_SPLITS['test']:,})")
    return why


def table4_frame(curve: RateDistortionCurve, data: str | None = None,
                 n_images: int | None = None) -> pd.DataFrame:
    """Table 4 of one curve: reverse times T, 0.9T, ..., 0.1T; the paper's columns filled when T = 1000, for
    context; the deltas only when `table4_comparison` of the curve's data, image count and T is empty."""
    rows = table4_rows(curve)
    paper_rate, paper_rmse = paper_table4_columns(rows.reverse_time, curve.T)
    df = pd.DataFrame({C.REVERSE_TIME: rows.reverse_time, C.RATE_BPD: rows.rate_bpd, C.RMSE: rows.rmse,
                       C.PAPER_RATE_BPD: paper_rate, C.PAPER_RMSE: paper_rmse})
    comparable = not table4_comparison(data, n_images, curve.T)
    df[C.DELTA_RATE_BPD] = df[C.RATE_BPD] - df[C.PAPER_RATE_BPD] if comparable else math.nan
    df[C.DELTA_RMSE] = df[C.RMSE] - df[C.PAPER_RMSE] if comparable else math.nan
    return df[list(C.TABLE4_COLUMNS)]


def curve_frame(curve: RateDistortionCurve) -> pd.DataFrame:
    """Every t = T..1 (reverse time 1..T): the columns of curve.csv."""
    return pd.DataFrame({C.T: curve.t, C.REVERSE_TIME: curve.reverse_time, C.RATE_BPD: curve.rate_bpd,
                         C.RMSE: curve.rmse, C.RMSE_PER_IMAGE: curve.rmse_per_image})[list(C.CURVE_COLUMNS)]


def table4(curves: list[tuple[RunInputs, RateDistortionCurve, dict]],
           where: RelativeTo | None = None) -> Table:
    """Table 4 of every run with a rate-distortion curve, stacked; `source` names the run and file, the cells'
    provenance the model identity. `origin` (of each curve) names its data and image count."""
    where = where or RelativeTo(Path.cwd())
    frames, cells, models, why = [], [], [], []
    offset = 0
    for run, curve, origin in curves:
        df = table4_frame(curve, origin.get("data"), origin.get("n_images"))
        why += [(short_label(run), r) for r in
                table4_comparison(where.text(origin.get("data")), origin.get("n_images"), curve.T)]
        df[C.SOURCE] = _files_used(run, where, origin.get("file")) + (
            f" (model {run.model.short()})" if run.model else "")
        for j, s in enumerate(df[C.REVERSE_TIME]):
            _add_cells(cells, offset + j, f"{run.label} s={s}",  # s: `rows_text` names a run's rows by it
                       {C.RATE_BPD: float(df[C.RATE_BPD].iloc[j]), C.RMSE: float(df[C.RMSE].iloc[j])}, origin)
        offset += len(df)
        frames.append(df)
        models += [short_label(run)] * len(df)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(C.TABLE4_REPORT_COLUMNS))
    note = ("Rate L_T + sum_{k=t}^{T-1} L_k (bits/dim) and distortion RMSE of x0_hat(x_t) on [0, 255] at reverse "
            "time s = T - t + 1 (paper §4.3). Paper columns only for T = 1000 (CIFAR-10 test set), for "
            "context; deltas only for a bound on the whole CIFAR-10 test set with T = 1000.")
    frame = frame[list(C.TABLE4_REPORT_COLUMNS)]

    def with_paper(a: pd.Series, b: pd.Series) -> list[str]:
        return [_fmt(x, 3) + (f" [{_fmt(y, 3)}]" if np.isfinite(y) else "")
                for x, y in zip(a, b, strict=True)]

    display = pd.DataFrame({
        "Reverse process steps (T - t)": [str(int(v)) for v in frame[C.REVERSE_TIME]],
        "Rate (bits/dim)": with_paper(frame[C.RATE_BPD], frame[C.PAPER_RATE_BPD]),
        "Distortion (RMSE [0, 255])": with_paper(frame[C.RMSE], frame[C.PAPER_RMSE]),
        "Model": models})
    return Table("table4", "Table 4: rate and distortion along the reverse process", frame, cells,
                 note + " The Markdown shows the paper's value in brackets.", blocks=[Block(None, display)],
                 notes=once(why, labelled=len(curves) > 1),
                 left_out=None if curves else (
                     "Table 4 (rate and distortion) is left out: no input holds every term of a test-split bound "
                     "(a rate-distortion output, or an nll output without --terms or --ode)."))


# -- writing ------------------------------------------------------------------------------------------------

def _md_cell(v):
    if v is None or v is pd.NA or (isinstance(v, float) and not np.isfinite(v)):
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


def wrapped(lines: list[str], width: int = MD_WIDTH) -> str:
    """A Markdown list, one item per line of `lines`, each wrapped to `width` (continued lines indented)."""
    return "\n".join(textwrap.fill(line, width, initial_indent="- ", subsequent_indent="  ",
                                    break_long_words=False, break_on_hyphens=False) for line in lines)


def blocks_markdown(table: Table, level: str = "###") -> str:
    """What a person reads of `table`: each block (its heading, its rows, its notes)."""
    blocks = table.blocks or [Block(None, table.frame)]
    parts = []
    for b in blocks:
        if b.heading:
            parts.append(f"{level} {b.heading}\n")
        parts.append(to_markdown(b.frame))
        if b.notes:
            parts.append(wrapped(b.notes) + "\n")
    return "\n".join(parts)


def to_csv(df: pd.DataFrame) -> str:
    """CSV with full float precision; missing values are empty fields."""
    return df.to_csv(index=False, na_rep="", lineterminator="\n")


def write_frame(df: pd.DataFrame, stem: str | Path, markdown: pd.DataFrame | str | None = None) -> list[str]:
    """`stem`.csv and `stem`.md (of `markdown` when given: a compact view of `df`, or its Markdown text),
    atomically."""
    csv_path, md_path = f"{stem}.csv", f"{stem}.md"
    atomic_write_text(csv_path, to_csv(df))
    md = markdown if isinstance(markdown, str) else to_markdown(df if markdown is None else markdown)
    atomic_write_text(md_path, md)
    return [csv_path, md_path]


def write_table(table: Table, out_dir: str | Path) -> list[str]:
    """`name`.csv, `name`.md and `name`.sources.json (the provenance of every measured cell)."""
    out_dir = Path(out_dir)
    paths = write_frame(table.frame, out_dir / table.name, markdown=blocks_markdown(table))
    src = out_dir / f"{table.name}.sources.json"
    atomic_write_json(src, {"table": table.name, "title": table.title, "note": table.note,
                            "paper_values": PAPER_VALUES_NAME, "cells": table.cells})
    return [*paths, str(src)]
