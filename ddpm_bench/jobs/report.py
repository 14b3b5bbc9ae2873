"""`ddpm-bench report`: Tables 1-4 and Figure 5 of the paper beside the measured values, with provenance.

`build_report(run_dirs, out_dir)` reads any number of reproduce run directories and plain nll, fid or
rate-distortion outputs, and writes into `out_dir` (atomically, file by file):
table1..table4 as .csv, .md and .sources.json, figure5.png/.pdf (from the first run with a rate-distortion
output or an nll_test per_image.npz) and report.md, an index that links them and says what produced
each measured cell. Values the runs do not have are empty cells.
"""

from __future__ import annotations

import json
from pathlib import Path

from ddpm_bench import __version__
from ddpm_bench.provenance import environment
from ddpm_bench.rate_distortion import RateDistortionCurve, rate_distortion_curve
from ddpm_bench.reporting.figures import figure5, save_figure
from ddpm_bench.reporting.inputs import CURVE_FILE, RunInputs, load_per_image, read_curve, read_run
from ddpm_bench.reporting.paper import PAPER_VALUES_NAME
from ddpm_bench.reporting.tables import (
    Table,
    nll_source,
    table1,
    table2,
    table3,
    table4,
    to_markdown,
    write_table,
)
from ddpm_bench.shards import atomic_write_json, atomic_write_text, prepare_run_dir

REPORT_COMMAND = "report"
REPORT_INDEX = "report.md"
REPORT_MANIFEST = "report.json"
FIGURE5_STEM = "figure5"
# provenance fields shown in report.md, in this order
DESCRIBE_KEYS = ("produced_by", "file", "model_sha256", "model", "step", "n_images", "n_samples", "n_ref", "ref",
                 "data", "split", "backend", "feature_extractor", "seed", "draws", "T", "clip", "decoder_cdf")


def curve_of(run: RunInputs) -> tuple[RateDistortionCurve, dict] | None:
    """The rate-distortion curve of a run and where it came from: its rate-distortion output, else its
    nll_test per_image.npz; None when it has neither."""
    if run.rate_distortion is not None:
        s = run.rate_distortion_summary or {}
        model = s.get("model") if isinstance(s.get("model"), dict) else {}
        origin = {"run_dir": str(run.path), "file": str(run.rate_distortion / CURVE_FILE),
                  "produced_by": "ddpm-bench rate-distortion", "model_sha256": model.get("sha256"),
                  "n_images": s.get("n_images"), "data": s.get("data"), "seed": s.get("seed"), "draws": s.get("draws"),
                  "T": s.get("T"), "clip": s.get("clip"), "decoder_cdf": s.get("decoder_cdf")}
        return read_curve(run.rate_distortion / CURVE_FILE), origin
    if run.nll_test is not None and run.nll_test.per_image_path.is_file():
        _, terms, mse = load_per_image(run.nll_test.path)
        origin = {**nll_source(run, run.nll_test), "file": str(run.nll_test.per_image_path),
                  "produced_by": "ddpm-bench nll (per_image.npz; rate and distortion computed by report)"}
        return rate_distortion_curve(terms, mse), origin
    return None


def describe(origin: dict) -> str:
    """One line naming what produced a value."""
    parts = []
    for k in DESCRIBE_KEYS:
        v = origin.get(k)
        if v is None:
            continue
        if k == "model_sha256":
            v = f"{v[:12]}…"
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
    have = {"config.json": run.config is not None, "nll_test": run.nll_test is not None,
            "nll_train": run.nll_train is not None, "gap.json": run.gap is not None, "fid": run.fid is not None,
            "rate_distortion": run.rate_distortion is not None}
    found = ", ".join(k for k, v in have.items() if v) or "nothing"
    missing = ", ".join(k for k, v in have.items() if not v) or "nothing"
    line = f"- `{run.path}` ({run.kind}): found {found}; missing {missing}"
    if run.gap is not None and "gap_bpd" in run.gap:
        ci = run.gap.get("ci95")
        line += f"; test - train gap {run.gap['gap_bpd']:.5f} bits/dim" + (f", 95% interval [{ci[0]:.5f}, {ci[1]:.5f}]"
                                                                          if isinstance(ci, list) and len(ci) == 2 else "")
    if run.nll_unknown_split:
        line += f"; its data `{run.nll_test.summary.get('data')}` is no :train/:test split and is shown as test"
    return line


def report_markdown(runs: list[RunInputs], tables: list[Table], figure: tuple[RunInputs, dict] | None) -> str:
    out = ["# ddpm-bench report", "",
           f"Measured values beside Ho, Jain, Abbeel (2020), *Denoising Diffusion Probabilistic Models* "
           f"(paper values from `{PAPER_VALUES_NAME}`), ddpm-bench {__version__}. Empty cells were not measured "
           "(or, in paper rows, not reported); `delta_*` columns are measured minus paper.", "", "## Inputs", ""]
    out += [run_inventory(r) for r in runs]
    for t in tables:
        out += ["", f"## {t.title}", "", f"Files: [{t.name}.csv]({t.name}.csv), [{t.name}.md]({t.name}.md), "
                f"[{t.name}.sources.json]({t.name}.sources.json)", "", t.note, "", to_markdown(t.frame).rstrip(), "",
                "What produced each measured cell:", "", cells_markdown(t).rstrip()]
    out += ["", "## Figure 5: rate and distortion along the reverse process", ""]
    if figure is None:
        out.append("Not drawn: no input has a rate-distortion output or an nll_test/per_image.npz.")
    else:
        run, origin = figure
        out += [f"![Figure 5]({FIGURE5_STEM}.png)", "",
                f"Files: [{FIGURE5_STEM}.png]({FIGURE5_STEM}.png), [{FIGURE5_STEM}.pdf]({FIGURE5_STEM}.pdf). "
                f"From `{run.path}` ← {describe(origin)}. Red circles: the paper's Table 4 (drawn only for T = 1000)."]
    return "\n".join(out) + "\n"


def build_report(run_dirs: list[str | Path], out_dir: str | Path, force: bool = False) -> dict:
    """Write the report of `run_dirs` into `out_dir`; returns the manifest (the files written and inputs)."""
    runs = [read_run(p) for p in run_dirs]
    out = Path(out_dir)
    prepare_run_dir(out, {"run_dirs": [str(Path(p).resolve()) for p in run_dirs]}, force=force, command=REPORT_COMMAND)
    curves = [(run, *c) for run in runs if (c := curve_of(run)) is not None]
    tables = [table1(runs), table2(runs), table3(runs), table4(curves)]
    files = []
    for t in tables:
        files += [Path(p).name for p in write_table(t, out)]
    figure = None
    if curves:
        run, curve, origin = curves[0]
        fig = figure5(curve, label=run.name, title=f"{run.name}: T = {curve.T}")
        files += [Path(p).name for p in save_figure(fig, out / FIGURE5_STEM)]
        figure = (run, origin)
    atomic_write_text(out / REPORT_INDEX, report_markdown(runs, tables, figure))
    files.append(REPORT_INDEX)
    manifest = {"command": REPORT_COMMAND, "run_dirs": [str(r.path) for r in runs], "files": files,
                "ddpm_bench_version": __version__, "environment": environment()}
    atomic_write_json(out / REPORT_MANIFEST, manifest)
    return manifest
