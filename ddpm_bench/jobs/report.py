"""`ddpm-bench report`: Tables 1-4 and Figure 5 of the paper beside the measured values, with provenance.

`build_report(run_dirs, out_dir)` reads any number of reproduce run directories and plain nll, fid or
rate-distortion outputs, and writes into `out_dir` (atomically, file by file):
table1..table4 as .csv, .md and .sources.json, figure5.png/.pdf (from the first run with a rate-distortion
output or an nll_test per_image.npz) and report.md, an index that links them and says what produced
each measured cell, naming the model identity (short sha256) of each. Values the runs do not have are
empty cells.

Inputs are read through the typed outputs (`reporting.inputs.read_inputs`): a garbage or wrongly typed
file is exit 2 naming the file and field, before `--out` is touched. Each run is counted once (`report X
X`, or two directories holding the same runs by run id: a warning, one row). A run directory whose outputs
come from different model identities is never merged into one row: it is split, one row per model
identity labelled with its short sha256, with a one-line warning on stderr; every table splits, none
refuses.

`--out` is claimed with `ddpm_bench.run_dir.claim` (command "report"). The report's identity is the runs it
reads, by content: `{"inputs": {KEY: MODEL_IDENTITY}}` with one KEY per output read, "nll:RUN_ID",
"fid:RUN_ID", "rate-distortion:NLL_RUN_ID", "gap:TRAIN_RUN_ID:TEST_RUN_ID", "samples:RUN_ID" and
"config:SHA256" (of config.json's content), each mapped to the sha256 of the model that produced it (None
for config.json and for a FID of plain images). No path is part of it: the same runs moved or given in
another order are the same report (rewritten in place); other runs into a directory that holds a report
are refused without --force.
"""

from __future__ import annotations

import json
from pathlib import Path

from ddpm_bench import run_dir
from ddpm_bench.estimators import read_output
from ddpm_bench.outputs import NllOutput, PerImage, RateDistortionSummary, ReportFiles, RunConfigFile
from ddpm_bench.provenance import environment
from ddpm_bench.rate_distortion_curve import RateDistortionCurve, rate_distortion_curve
from ddpm_bench.reporting import columns as C
from ddpm_bench.reporting.figures import bits_by_t_figure, figure5, save_figure
from ddpm_bench.reporting.inputs import PARTS, RunInputs, read_curve, read_inputs, short
from ddpm_bench.reporting.paper import PAPER_VALUES_NAME
from ddpm_bench.reporting.tables import (
    Table,
    model_source,
    nll_source,
    table1,
    table2,
    table3,
    table4,
    to_markdown,
    write_table,
)
from ddpm_bench.shards import atomic_write_json, atomic_write_text
from ddpm_bench.version import __version__

REPORT_COMMAND, REPORT_INDEX, REPORT_MANIFEST = ReportFiles.COMMAND, ReportFiles.INDEX, ReportFiles.MANIFEST
FIGURE5_STEM = ReportFiles.FIGURE5
# provenance fields shown in report.md, in this order
DESCRIBE_KEYS = ("produced_by", "file", "model_identity", "model", "weights", "n_images", "n_samples", "n_ref", "ref",
                 "data", "split", "backend", "feature_extractor", "seed", "draws", "T", "clip", "decoder_cdf")


def curve_of(run: RunInputs) -> tuple[RateDistortionCurve, dict] | None:
    """The rate-distortion curve of a run and where it came from: its rate-distortion output, else its
    nll_test per_image.npz; None when it has neither."""
    if run.rate_distortion is not None:
        rd = run.rate_distortion
        s = rd.output
        origin = {"run_dir": str(run.path), "file": str(rd.folder / RateDistortionSummary.CURVE),
                  "produced_by": "ddpm-bench rate-distortion", "nll_run_id": s.nll_run_id,
                  **model_source(rd.identity), "n_images": s.n_images, "data": s.data, "seed": s.seed,
                  "draws": s.draws, "T": s.T, "clip": s.clip, "decoder_cdf": s.decoder_cdf}
        return read_curve(rd.folder), origin
    if (nll := exact_nll_test(run)) is not None:
        origin = {**nll_source(run, run.nll_test), "file": str(nll.path / PerImage.FILE),
                  "produced_by": "ddpm-bench nll (per_image.npz; rate and distortion computed by report)"}
        return rate_distortion_curve(nll.per_image.terms, nll.per_image.mse), origin
    return None


def exact_nll_test(run: RunInputs) -> NllOutput | None:
    """The run's nll_test output with its per_image.npz, when it holds every term (not `--terms K`)."""
    if run.nll_test is None or not (run.nll_test.folder / PerImage.FILE).is_file():
        return None
    nll = read_output(run.nll_test.folder)  # per_image.npz checked against its summary
    return nll if nll.per_image.exact else None


def describe(origin: dict) -> str:
    """One line naming what produced a value."""
    parts = []
    for k in DESCRIBE_KEYS:
        v = origin.get(k)
        if k == "model_identity" and k in origin:
            weak = origin.get("model_identity_strong") is False
            parts.append("model identity none (images without a ddpm-bench sample manifest)" if v is None else
                         f"model identity {short(v)}" + (" (weak: a plug-in's source file hash)" if weak else ""))
            continue
        if v is None:
            continue
        parts.append(f"{k} `{v}`" if k in ("file", "model") else f"{k} {v}")
    return "; ".join(parts)


def cells_markdown(table: Table) -> str:
    """The provenance of each measured cell, grouped by the file and run that produced it."""
    if not table.cells:
        return "No measured cells: every number in this table is the paper's.\n"
    groups: dict[str, list[dict]] = {}
    for cell in table.cells:
        groups.setdefault(json.dumps(cell["from"], sort_keys=True, default=str), []).append(cell)
    lines = []
    for key, cells in groups.items():
        by_row: dict[str, list[str]] = {}
        for cell in cells:
            by_row.setdefault(cell["row_label"], []).append(cell["column"])
        by_columns: dict[str, list[str]] = {}  # rows with the same columns together
        for label, cols in by_row.items():
            by_columns.setdefault(", ".join(cols), []).append(label)
        where = "; ".join(f"{_rows_text(labels)}: {cols}" for cols, labels in by_columns.items())
        lines.append(f"- {where} ← {describe(json.loads(key))}")
    return "\n".join(lines) + "\n"


def _rows_text(labels: list[str]) -> str:
    if len(labels) == 1:
        return f"row `{labels[0]}`"
    if len(labels) <= 3:
        return "rows " + ", ".join(f"`{x}`" for x in labels)
    return f"{len(labels)} rows `{labels[0]}` … `{labels[-1]}`"


def run_inventory(run: RunInputs) -> str:
    have = {RunConfigFile.FILE: run.config is not None, **{n: getattr(run, n) is not None for n in PARTS}}
    found = ", ".join(k for k, v in have.items() if v) or "nothing"
    missing = ", ".join(k for k, v in have.items() if not v) or "nothing"
    model = run.model
    who = "no model identity"
    if model is not None:
        how = [model.kind, *([f"{model.weights} weights"] if model.weights else []),
               *([] if model.strong else ["weak identity: a plug-in's source file hash"])]
        who = f"model identity {model.short()} ({', '.join(how)}, from `{model.origin}`)"
    line = f"- `{run.path}` ({run.kind}; {who}): found {found}; missing {missing}"
    if run.split_from > 1:
        line += f"; this directory holds outputs of {run.split_from} models, each its own row"
    if run.gap is not None:
        g = run.gap.output
        line += f"; test - train gap {g.gap_bpd:.5f} bits/dim, 95% interval [{g.ci95[0]:.5f}, {g.ci95[1]:.5f}]"
    if run.nll_unknown_split and run.nll_test is not None:
        line += f"; its data `{run.nll_test.output.data}` is no :train/:test split and is shown as test"
    return line


def measured_details(t: Table) -> str:
    """One line per measured row of `t`: every filled column of the CSV (numbers to 4 decimals)."""
    frame = t.frame
    if C.ORIGIN in frame.columns:
        frame = frame[frame[C.ORIGIN] == C.ORIGIN_MEASURED]
    elif C.SOURCE in frame.columns:
        frame = frame[~frame[C.SOURCE].astype(str).str.startswith(C.ORIGIN_PAPER)]
    lines = []
    for r in frame.to_dict("records"):
        cells = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                 if k not in (C.ORIGIN, C.MODEL, C.SOURCE) and v is not None and v == v and v != ""]
        label = r.get(C.MODEL) or r.get(C.SOURCE, "")
        lines.append(f"- {label}: " + ", ".join(cells) + (f" (from {r[C.SOURCE]})" if C.SOURCE in r else ""))
    return "\n".join(lines) + "\n" if lines else "No measured rows.\n"


def report_markdown(runs: list[RunInputs], tables: list[Table], figure: tuple[RunInputs, dict] | None,
                    bits: tuple[RunInputs, NllOutput] | None = None) -> str:
    out = ["# ddpm-bench report", "",
           f"Measured values beside Ho, Jain, Abbeel (2020), *Denoising Diffusion Probabilistic Models* "
           f"(paper values from `{PAPER_VALUES_NAME}`), ddpm-bench {__version__}. Empty cells were not measured "
           "(or, in paper rows, not reported); `delta_*` columns are measured minus paper.", "", "## Inputs", ""]
    out += [run_inventory(r) for r in runs]
    for t in tables:
        out += ["", f"## {t.title}", "", f"Files: [{t.name}.csv]({t.name}.csv), [{t.name}.md]({t.name}.md), "
                f"[{t.name}.sources.json]({t.name}.sources.json)", "", t.note, "",
                to_markdown(t.frame if t.display is None else t.display).rstrip(), "",
                "Measured rows in full (standard errors, deltas to the paper, comparability; as in the CSV):", "",
                measured_details(t).rstrip(), "", "What produced each measured cell:", "", cells_markdown(t).rstrip()]
    out += ["", "## Figure 5: rate and distortion along the reverse process", ""]
    if figure is None:
        out.append("Not drawn: no input has a rate-distortion output or an nll_test/per_image.npz.")
    else:
        run, origin = figure
        out += [f"![Figure 5]({FIGURE5_STEM}.png)", "",
                f"Files: [{FIGURE5_STEM}.png]({FIGURE5_STEM}.png), [{FIGURE5_STEM}.pdf]({FIGURE5_STEM}.pdf). "
                f"From `{run.path}` ← {describe(origin)}. Red circles: the paper's Table 4 (drawn only for T = 1000)."]
    stem = ReportFiles.BITS_BY_T
    out += ["", "## Where the bits go: L_t against t", ""]
    if bits is None:
        out.append("Not drawn: no input has an exact nll_test/per_image.npz.")
    else:
        run, nll = bits
        out += [f"![Where the bits go]({stem}.png)", "", f"Files: [{stem}.png]({stem}.png), [{stem}.pdf]({stem}.pdf). "
                f"The mean of each term over the {nll.summary.n_images} images of `{nll.path}` (log scale) and the share "
                "of the bound in L_0..L_t, as improved DDPM's Figure 2 (Nichol and Dhariwal 2021)."]
    return "\n".join(out) + "\n"


def build_report(run_dirs: list[str | Path], out_dir: str | Path, force: bool = False) -> dict:
    """Write the report of `run_dirs` into `out_dir`; returns the manifest (the files written and inputs).
    Every input is read and checked before `out_dir` is claimed."""
    runs = read_inputs(run_dirs)
    curves = [(run, *c) for run in runs if (c := curve_of(run)) is not None]
    out = Path(out_dir)
    try:
        run_dir.claim(out, REPORT_COMMAND, report_identity(runs), force=force)
        return _write_report(runs, curves, out)
    finally:
        run_dir.release(out)  # the report is written (or refused): the lock is not held past it


def report_identity(runs: list[RunInputs]) -> dict:
    """What the report is of: every output it reads by run id (config.json by content), each with the
    identity of the model that produced it; no paths (see the module docstring)."""
    inputs = {}
    for run in runs:
        models = {p.key: p.model_sha256 for p in run.parts()}
        inputs.update({k: models.get(k) for k in run.keys()})
    return {"inputs": inputs}


def _write_report(runs: list[RunInputs], curves: list, out: Path) -> dict:
    tables = [table1(runs), table2(runs), table3(runs), table4(curves)]
    files = []
    for t in tables:
        files += [Path(p).name for p in write_table(t, out)]
    figure = None
    if curves:
        run, curve, origin = curves[0]
        fig = figure5(curve, label=run.label, title=f"{run.label}: T = {curve.T}")
        files += [Path(p).name for p in save_figure(fig, out / FIGURE5_STEM)]
        figure = (run, origin)
    bits = next(((run, nll) for run in runs if (nll := exact_nll_test(run)) is not None), None)
    if bits is not None:
        run, nll = bits
        fig = bits_by_t_figure(nll.per_image.terms, label=run.label,
                               title=f"Where the bits go: {run.label}, {nll.summary.data}, {nll.summary.n_images} images")
        files += [Path(p).name for p in save_figure(fig, out / ReportFiles.BITS_BY_T)]
    atomic_write_text(out / REPORT_INDEX, report_markdown(runs, tables, figure, bits))
    files.append(REPORT_INDEX)
    manifest = {"command": REPORT_COMMAND, "run_dirs": list(dict.fromkeys(str(r.path) for r in runs)), "files": files,
                "ddpm_bench_version": __version__, "environment": environment()}
    atomic_write_json(out / REPORT_MANIFEST, manifest)
    print_table1(tables[0], out)
    return manifest


def print_table1(t: Table, out: Path) -> None:
    """What `report` did: where the report is, and Table 1's measured rows beside the paper's own model."""
    show = t.display[t.frame[C.ORIGIN].eq(C.ORIGIN_MEASURED) | t.frame[C.MODEL].str.startswith("Ours")]
    print(f"report: {out / REPORT_INDEX} (Tables 1-4, Figure 5); Table 1:")
    for line in to_markdown(show).splitlines():
        print(f"  {line}")
