"""`ddpm-bench report`: Tables 1-4 and Figure 5 of the paper beside the measured values, with provenance.

`build_report(run_dirs, out_dir)` reads any number of reproduce run directories and plain nll, fid or
rate-distortion outputs, and writes into `out_dir` (atomically, file by file): table1..table4 as .csv, .md
and .sources.json, figure5.png/.pdf (every run with a rate-distortion output or an nll_test
per_image.npz, one curve each), bits_by_t.png/.pdf (every exact nll_test), each sample directory's grid and
progressive PNGs (samples_grid.png, progressive.png) and report.md, an index that shows them, states each
run's gap verdict (`reporting.verdict`), and says in one compact table per report table what produced each
measured cell, naming the model identity (short sha256) of each. Values the runs do not have are empty
cells. Every path in these files is relative to `out_dir` (`reporting.paths`).

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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ddpm_bench import run_dir
from ddpm_bench.estimators import ESTIMATORS, read_output
from ddpm_bench.outputs import (
    NllOutput,
    PerImage,
    RateDistortionSummary,
    ReportFiles,
    RunConfigFile,
    SampleManifest,
)
from ddpm_bench.provenance import environment
from ddpm_bench.rate_distortion_curve import RateDistortionCurve, rate_distortion_curve
from ddpm_bench.reporting import columns as C
from ddpm_bench.reporting.figures import bits_by_t_models, figure5_models, save_figure
from ddpm_bench.reporting.inputs import (
    OPTIONAL_PARTS,
    PARTS,
    RunInputs,
    dataset_name,
    read_curve,
    read_inputs,
    short,
)
from ddpm_bench.reporting.paper import PAPER_VALUES_NAME
from ddpm_bench.reporting.paths import RelativeTo
from ddpm_bench.reporting.tables import (
    Table,
    blocks_markdown,
    is_note,
    model_source,
    nll_source,
    rows_text,
    short_label,
    table1,
    table1_display,
    table2,
    table3,
    table4,
    to_markdown,
    wrapped,
    write_table,
)
from ddpm_bench.reporting.verdict import gap_verdict
from ddpm_bench.shards import atomic_write_bytes, atomic_write_json, atomic_write_text
from ddpm_bench.version import __version__

REPORT_COMMAND, REPORT_INDEX, REPORT_MANIFEST = ReportFiles.COMMAND, ReportFiles.INDEX, ReportFiles.MANIFEST
FIGURE5_STEM = ReportFiles.FIGURE5
SAMPLES_GRID, PROGRESSIVE = "samples_grid", "progressive"  # .png: a sample dir's grid.png, progressive.png


def curve_of(run: RunInputs, where: RelativeTo) -> tuple[RateDistortionCurve, dict] | None:
    """The rate-distortion curve of a run and where it came from: its rate-distortion output, else its
    nll_test per_image.npz; None when it has neither."""
    if run.rate_distortion is not None:
        rd = run.rate_distortion
        s = rd.output
        origin = {"run_dir": where.path(run.path),
                  "file": where.path(rd.folder / RateDistortionSummary.CURVE),
                  "produced_by": "ddpm-bench rate-distortion", "nll_run_id": s.nll_run_id,
                  **model_source(rd.identity, where), "n_images": s.n_images, "data": where.text(s.data),
                  "seed": s.seed, "draws": s.draws, "T": s.T, "clip": s.clip, "decoder_cdf": s.decoder_cdf}
        return read_curve(rd.folder), origin
    if (nll := exact_nll_test(run)) is not None:
        origin = {**nll_source(run, run.nll_test, where), "file": where.path(nll.path / PerImage.FILE),
                  "produced_by": "ddpm-bench nll (per_image.npz; rate and distortion computed by report)"}
        return rate_distortion_curve(nll.per_image.terms, nll.per_image.mse), origin
    return None


def exact_nll_test(run: RunInputs) -> NllOutput | None:
    """The run's nll_test output with its per_image.npz, when its estimator gives every term (the rule of
    `rate-distortion`: not `--terms K`, not `--ode`)."""
    if run.nll_test is None or not ESTIMATORS[run.nll_test.output.estimator].RATE_DISTORTION:
        return None
    if not (run.nll_test.folder / PerImage.FILE).is_file():
        return None
    return read_output(run.nll_test.folder)  # per_image.npz checked against its summary


# -- what produced each measured cell: one compact table per report table ----------------------------------

def _count(origin: dict) -> str:
    if origin.get("n_images") is not None:
        return f"{origin['n_images']:,} images of {origin.get('data')}"
    if origin.get("n_samples") is not None:
        return (f"{origin['n_samples']:,} samples; reference {origin.get('n_ref'):,} images of "
                f"{origin.get('ref')}")
    return ""


def _how(origin: dict) -> str:
    """The estimator (or FID tool) and the settings that made a value."""
    if origin.get("backend") is not None:
        return f"backend {origin['backend']}, feature extractor {origin.get('feature_extractor')}"
    parts = [f"estimator {origin['estimator']} ({origin.get('quantity')})" if origin.get("estimator") else
             str(origin.get("produced_by", "")).removeprefix("ddpm-bench ")]
    parts += [f"{k} {origin[k]}" for k in ("seed", "draws", "T") if origin.get(k) is not None]
    return ", ".join(parts)


def _model(origin: dict) -> str:
    if origin.get("model_identity") is None:
        return "model identity none (images without a ddpm-bench sample manifest)"
    weak = " (weak: a plug-in's source file hash)" if origin.get("model_identity_strong") is False else ""
    return f"model identity {short(origin['model_identity'])}{weak}"


def _values(cells: list[dict]) -> str:
    """"3.7560 ± 0.0312" for a value with its standard error, "197.0826" otherwise."""
    by_column = {c["column"]: c["value"] for c in cells}
    out = []
    for column, value in by_column.items():
        if column.endswith("_stderr") and column.removesuffix("_stderr") in by_column:
            continue
        se = by_column.get(f"{column}_stderr")
        out.append(f"{value:.4f}" + (f" ± {se:.4f}" if se is not None else ""))
    return ", ".join(out)


def measured_markdown(table: Table) -> str:
    """Every measured cell of `table` with what produced it, one line per row and file: the values in full
    (4 decimals, standard errors), the image or sample count, the estimator or FID tool, the file (relative
    to the report) and the model (in the row's name)."""
    if not table.cells:
        return "No measured cells: every number in this table is the paper's.\n"
    groups: dict[str, list[dict]] = {}
    for cell in table.cells:
        groups.setdefault(json.dumps(cell["from"], sort_keys=True, default=str), []).append(cell)
    rows = []
    for key, cells in groups.items():
        origin = json.loads(key)
        labels = list(dict.fromkeys(c["row_label"] for c in cells))
        columns = list(dict.fromkeys(c["column"] for c in cells))
        rows.append({"Row": rows_text(labels), "Cells": ", ".join(columns),
                     "Values": _values(cells) if len(labels) == 1 else "in the table above",
                     "n": _count(origin), "Estimator or tool": _how(origin), "Model": _model(origin),
                     "File": f"`{origin.get('file')}`"})
    return to_markdown(pd.DataFrame(rows))


# -- report.md ----------------------------------------------------------------------------------------------

def run_inventory(run: RunInputs, where: RelativeTo) -> str:
    have = {RunConfigFile.FILE: run.config is not None, **{n: getattr(run, n) is not None for n in PARTS}}
    found = ", ".join(k for k, v in have.items() if v) or "nothing"
    missing = ", ".join(k for k, v in have.items() if not v and k not in OPTIONAL_PARTS) or "nothing"
    model = run.model
    who = "no model identity"
    if model is not None:
        how = [model.kind, *([f"{model.weights} weights"] if model.weights else []),
               *([] if model.strong else ["weak identity: a plug-in's source file hash"])]
        who = f"model identity {model.short()} ({', '.join(how)}, from `{where.text(model.origin)}`)"
    line = f"- `{run.name}` (`{where.path(run.path)}`, {run.kind}; {who}): found {found}; missing {missing}"
    if run.split_from > 1:
        line += f"; this directory holds outputs of {run.split_from} models, each its own row"
    if run.nll_unknown_split and run.nll_test is not None:
        data = where.text(run.nll_test.output.data)
        line += f"; its data `{data}` is no :train/:test split and is shown as test"
    if run.gap is not None:
        line += f"\n  - gap (`{where.path(run.gap.file)}`): {gap_verdict(run.gap.output)}"
    return line


def table_markdown(t: Table) -> list[str]:
    """A table's section of report.md."""
    if t.left_out:
        return ["", t.left_out]
    out = ["", f"## {t.title}", "", f"Files: [{t.name}.csv]({t.name}.csv), [{t.name}.md]({t.name}.md), "
           f"[{t.name}.sources.json]({t.name}.sources.json)", "", t.note, "", blocks_markdown(t).rstrip(), "",
           f"Measured cells in full (every column in {t.name}.csv, what produced each cell in "
           f"{t.name}.sources.json):", "", measured_markdown(t).rstrip()]
    if t.notes:
        out += ["", "Not comparable with the paper:", "", wrapped(t.notes)]
    return out


def samples_markdown(samples: list[tuple[RunInputs, list[tuple[str, str]]]], where: RelativeTo) -> list[str]:
    """The samples section: each sample directory's grid and progressive PNGs (copied beside report.md),
    and why its IS is empty, where it is."""
    out = ["", "## Samples"]
    if not samples:
        return out + ["", "No input has a sample directory (samples/manifest.json)."]
    for run, names in samples:
        m = run.samples.output
        steps = m.sampler.get("steps")
        out += ["", f"### {short_label(run)}", "",
                f"{m.count:,} samples (seed {m.seed}" + (f", {steps} steps" if steps else "") +
                f") in `{where.path(run.samples.folder)}`: the first {min(SampleManifest.GRID_SAMPLES, m.count):,}, and "
                "(with `--progressive-every`) the x0 prediction along the reverse process of the first "
                f"{min(SampleManifest.PROGRESSIVE_ROWS, m.count)}, left to right."]
        for what, name in names:
            alt = short_label(run).replace("[", "(").replace("]", ")")
            out += ["", f"![{what} of {alt}]({name})"]
        if not names:
            out += ["", f"(no {SampleManifest.GRID} in the sample directory)"]
        if (note := is_note(run)) is not None:
            out += ["", note]
    return out


def report_markdown(runs: list[RunInputs], tables: list[Table], curves: list, bits: list,
                    samples: list[tuple[RunInputs, list[tuple[str, str]]]], where: RelativeTo) -> str:
    out = ["# ddpm-bench report", "",
           f"Measured values beside Ho, Jain, Abbeel (2020), *Denoising Diffusion Probabilistic Models* "
           f"(paper values from `{PAPER_VALUES_NAME}`), ddpm-bench {__version__}. Empty cells were not measured "
           "(or, in paper rows, not reported); `delta_*` columns are measured minus paper. Paths are "
           "relative to this file.", "", "## Inputs", ""]
    out += [run_inventory(r, where) for r in runs]
    for t in tables:
        out += table_markdown(t)
    out += samples_markdown(samples, where)
    out += ["", "## Figure 5: rate and distortion along the reverse process", ""]
    if not curves:
        out.append("Not drawn: no input has a rate-distortion output or an nll_test/per_image.npz.")
    else:
        out += [f"![Figure 5]({FIGURE5_STEM}.png)", "",
                f"Files: [{FIGURE5_STEM}.png]({FIGURE5_STEM}.png), [{FIGURE5_STEM}.pdf]({FIGURE5_STEM}.pdf). "
                "Red circles: the paper's Table 4 (CIFAR-10, drawn only for T = 1000). One curve per model:",
                ""]
        out += [f"- {short_label(run)}: {origin['n_images']:,} images of {origin.get('data')}, "
                f"T = {curve.T}, from `{origin.get('file')}`" for run, curve, origin in curves]
    stem = ReportFiles.BITS_BY_T
    out += ["", "## Where the bits go: L_t against t", ""]
    if not bits:
        out.append("Not drawn: no input has an exact nll_test/per_image.npz.")
    else:
        out += [f"![Where the bits go]({stem}.png)", "", f"Files: [{stem}.png]({stem}.png), [{stem}.pdf]({stem}.pdf). "
                "The mean of each term over the images (log scale) and the share of the bound in L_0..L_t, "
                "as improved DDPM's Figure 2 (Nichol and Dhariwal 2021). One pair of curves per model:", ""]
        out += [f"- {short_label(run)}: {nll.summary.n_images:,} images of {nll.summary.data}, from "
                f"`{where.path(nll.path)}`" for run, nll in bits]
    return "\n".join(out) + "\n"


# -- building it ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReportResult:
    """A written report: its folder, the files in it, Table 1 as a person reads it (`table1`, a DataFrame:
    the paper's own model beside the measured rows) and each run's gap verdict in words (`verdicts`)."""

    path: Path
    files: tuple[str, ...]
    table1: pd.DataFrame
    verdicts: tuple[str, ...]

    @property
    def index(self) -> Path:
        return self.path / REPORT_INDEX

    def lines(self) -> list[str]:
        """What `report` prints: where the report is, Table 1's rows, the verdicts."""
        return ([f"report: {self.index} (Tables 1-4, Figure 5); Table 1:"]
                + [f"  {line}" for line in to_markdown(self.table1).splitlines()] + [f"  {v}" for v in self.verdicts])

    def __repr__(self) -> str:
        measured = int((self.table1[C.SHOW_VERSUS] != "").sum()) if C.SHOW_VERSUS in self.table1 else 0
        verdicts = f"; {len(self.verdicts)} gap verdict(s)" if self.verdicts else ""
        return (f"<ReportResult {self.index}: {len(self.files)} files, Table 1 with {measured} measured row(s)"
                f"{verdicts}>")


def build_report(run_dirs: list[str | Path], out_dir: str | Path, force: bool = False) -> ReportResult:
    """Write the report of `run_dirs` into `out_dir`. Every input is read and checked before `out_dir` is
    claimed; the lock is given up (and its file removed) once the report is written or refused."""
    runs = read_inputs(run_dirs)
    out = Path(out_dir)
    where = RelativeTo(out)
    curves = [(run, *c) for run in runs if (c := curve_of(run, where)) is not None]
    try:
        run_dir.claim(out, REPORT_COMMAND, report_identity(runs), force=force)
        return _write_report(runs, curves, out, where)
    finally:
        run_dir.release(out)


def report_identity(runs: list[RunInputs]) -> dict:
    """What the report is of: every output it reads by run id (config.json by content), each with the
    identity of the model that produced it; no paths (see the module docstring)."""
    inputs = {}
    for run in runs:
        models = {p.key: p.model_sha256 for p in run.parts()}
        inputs.update({k: models.get(k) for k in run.keys()})
    return {"inputs": inputs}


SAMPLE_IMAGES = ((SampleManifest.GRID, SAMPLES_GRID, "Samples"),
                 (SampleManifest.PROGRESSIVE_PNG, PROGRESSIVE, "Progressive x0 predictions"))


def copy_samples(runs: list[RunInputs], out: Path) -> list[tuple[RunInputs, list[tuple[str, str]]]]:
    """Each sample directory's grid.png and progressive.png, copied beside report.md (samples_grid.png,
    progressive.png; samples_grid_2.png, ... for further runs): each run with (what, file name) of each."""
    copied = []
    for run in runs:
        if run.samples is None:
            continue
        suffix = f"_{len(copied) + 1}" if copied else ""
        names = []
        for src, stem, what in SAMPLE_IMAGES:
            if (run.samples.folder / src).is_file():
                name = f"{stem}{suffix}.png"
                atomic_write_bytes(out / name, (run.samples.folder / src).read_bytes())
                names.append((what, name))
        copied.append((run, names))
    return copied


def _write_report(runs: list[RunInputs], curves: list, out: Path, where: RelativeTo) -> dict:
    tables = [table1(runs, where=where), table2(runs, where=where), table3(runs, where=where),
              table4(curves, where=where)]
    files = []
    for t in tables:
        files += [Path(p).name for p in write_table(t, out)]
    if curves:
        title = "Figure 5: " + ", ".join(f"{short_label(run)} (T = {curve.T}, {origin['n_images']:,} images)"
                                         for run, curve, origin in curves)
        fig = figure5_models([(short_label(run), curve) for run, curve, _ in curves], title=title)
        files += [Path(p).name for p in save_figure(fig, out / FIGURE5_STEM)]
    bits = [(run, nll) for run in runs if (nll := exact_nll_test(run)) is not None]
    if bits:
        title = "Where the bits go: " + ", ".join(f"{short_label(run)} ({dataset_name(nll.summary.data)}, "
                                                  f"{nll.summary.n_images} images)" for run, nll in bits)
        fig = bits_by_t_models([(short_label(run), nll.per_image.terms) for run, nll in bits], title=title)
        files += [Path(p).name for p in save_figure(fig, out / ReportFiles.BITS_BY_T)]
    samples = copy_samples(runs, out)
    files += [name for _, names in samples for _, name in names]
    atomic_write_text(out / REPORT_INDEX, report_markdown(runs, tables, curves, bits, samples, where))
    files.append(REPORT_INDEX)
    manifest = {"command": REPORT_COMMAND, "run_dirs": list(dict.fromkeys(where.path(r.path) for r in runs)),
                "files": files, "ddpm_bench_version": __version__, "environment": where.json(environment())}
    atomic_write_json(out / REPORT_MANIFEST, manifest)
    t = tables[0]
    shown = t.frame[C.ORIGIN].eq(C.ORIGIN_MEASURED) | t.frame[C.MODEL].str.startswith("Ours")
    verdicts = tuple(f"{short_label(run)}: {gap_verdict(run.gap.output)}" for run in runs if run.gap is not None)
    return ReportResult(out, tuple(files), table1_display(t.frame)[shown.to_numpy()].reset_index(drop=True), verdicts)
