"""The inputs of `report`, read only through the typed outputs of `ddpm_bench.outputs`.

A `report` input is one of
- a `reproduce` run directory (`outputs.ReproduceLayout`): its config.json, nll_train/, nll_test/,
  gap_nll_train/, gap_nll_test/ (the importance-sampled bounds of `gap_terms`), gap.json, rate_distortion/,
  fid/ and samples/, whichever exist. An nll or rate-distortion directory without its
  summary, fid/ without its metrics and samples/ without its manifest are unfinished and count as absent;
- a plain `nll`, `fid` or `rate-distortion` output.
Every file that is there is read and checked in full: a missing, garbage or wrongly typed field is an
`OutputFileError` (exit 2, one line naming the file and the field). Nothing is filled in.

Each measured output (a `Part`) carries the identity of the model that produced it (`ModelIdentity`;
a FID of images that are no ddpm-bench samples has none). `read_inputs` then
- counts every run once (`deduplicate`): the same directory given twice is read once; an input whose runs
  (by run id) are all in another input is dropped; a run that two inputs share is kept in the first only;
  each with a warning on stderr;
- never merges the outputs of different models into one row (`split_by_model`): an input whose parts
  come from several model identities becomes one row per identity, labelled with the short identity,
  with a one-line warning on stderr. Every table splits; none refuses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import pandas as pd

from ddpm_bench.arguments import given
from ddpm_bench.data import source_split
from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.errors import UserError
from ddpm_bench.estimators import column_of, read_summary
from ddpm_bench.identity import ModelIdentity
from ddpm_bench.messages import warn
from ddpm_bench.outputs import (
    FidMetrics,
    GapResult,
    NllSummary,
    OutputFileError,
    RateDistortionSummary,
    ReproduceLayout,
    RunConfigFile,
    SampleManifest,
    identity_of,
)
from ddpm_bench.rate_distortion_curve import RateDistortionCurve
from ddpm_bench.reporting import columns as C

Out = TypeVar("Out")


class ReportInputError(UserError):
    """A `report` argument that is no directory, or holds none of the outputs `report` reads."""


def short(sha256: str | None) -> str:
    return "none" if sha256 is None else sha256[:12]


@dataclass(frozen=True)
class Part(Generic[Out]):
    """One measured output of an input: the typed output, the file it was read from, and the model it
    belongs to (None: a FID of images that carry no model identity)."""

    name: str  # the RunInputs field that holds it: see PARTS
    file: Path
    output: Out
    identity: ModelIdentity | None

    @property
    def folder(self) -> Path:
        return self.file.parent

    @property
    def model_sha256(self) -> str | None:
        return None if self.identity is None else self.identity.sha256

    @property
    def key(self) -> str:
        """Which run this is, by content: the run id of the command that wrote it."""
        o = self.output
        if isinstance(o, NllSummary):
            return f"nll:{o.run_id}"
        if isinstance(o, FidMetrics):
            return f"fid:{o.run_id}"
        if isinstance(o, RateDistortionSummary):
            return f"rate-distortion:{o.nll_run_id}"  # rate-distortion's run identity is its nll run's id
        if isinstance(o, GapResult):
            return f"gap:{o.train_run_id}:{o.test_run_id}"
        if isinstance(o, SampleManifest):
            return f"samples:{o.run_id}"
        raise TypeError(f"not a report part: {type(o).__name__}")


# the measured parts of an input, in the order the warnings name them
PARTS = ("nll_train", "nll_test", "gap_nll_train", "gap_nll_test", "ode_train", "ode_test", "continuous_train",
         "continuous_test", "gap", "rate_distortion",
         "samples", "fid")
# a run without `gap_terms` or `[evaluation.ode]` lacks nothing without them
OPTIONAL_PARTS = ("gap_nll_train", "gap_nll_test", "ode_train", "ode_test", "continuous_train", "continuous_test")
# the nll outputs of each split a run may hold (Table 1 shows the most precise of them)
NLL_PARTS = {"test": ("nll_test", "gap_nll_test", "ode_test", "continuous_test"),
             "train": ("nll_train", "gap_nll_train", "ode_train", "continuous_train")}


def _nll(name: str, folder: Path) -> Part[NllSummary]:
    s = read_summary(folder)
    file = folder / NllSummary.FILE
    return Part(name, file, s, identity_of(s.model, file))


def _read_part(name: str, cls, folder: Path) -> Part:
    o = cls.read(folder)
    file = folder / cls.FILE
    if isinstance(o, FidMetrics):
        ident = None if o.samples_model is None else identity_of(o.samples_model, file, "samples_model")
    else:
        ident = identity_of(o.model, file)
    return Part(name, file, o, ident)


def _if_there(name: str, cls, folder: Path) -> Part | None:
    """The part in `folder` when its file is there (a finished run), None otherwise; a folder where its
    file should be is refused by name (never passed over as a part not yet measured)."""
    if (folder / cls.FILE).is_dir():
        raise ReportInputError(f"{folder / cls.FILE}: a folder, where {name}'s file {cls.FILE} should be")
    if not (folder / cls.FILE).is_file():
        return None
    return _nll(name, folder) if cls is NllSummary else _read_part(name, cls, folder)


def most_precise(parts: list[Part[NllSummary]]) -> Part[NllSummary] | None:
    """The output with the smallest `total_bpd_stderr` (one without a standard error, a single image, last;
    among equals the one of more images, then the first)."""
    def rank(p: Part[NllSummary]) -> tuple:
        se = p.output.total_bpd_stderr
        return (se is None, 0.0 if se is None else se, -p.output.n_images)

    return min(parts, key=rank) if parts else None


def read_curve(folder: Path) -> RateDistortionCurve:
    """The `curve.csv` of a rate-distortion output (columns `columns.CURVE_COLUMNS`)."""
    path = folder / RateDistortionSummary.CURVE
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise OutputFileError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise OutputFileError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    missing = [c for c in C.CURVE_COLUMNS if c not in df.columns]
    if missing:
        raise OutputFileError(f"{path}: column '{missing[0]}' is missing")
    if len(df) == 0:
        raise OutputFileError(f"{path}: no rows")
    for c in C.CURVE_COLUMNS:
        if not pd.api.types.is_numeric_dtype(df[c]):
            raise OutputFileError(f"{path}: column '{c}' is not numeric")
    df = df.sort_values(C.REVERSE_TIME)
    return RateDistortionCurve(t=df[C.T].to_numpy(np.int64), reverse_time=df[C.REVERSE_TIME].to_numpy(np.int64),
                               rate_bpd=df[C.RATE_BPD].to_numpy(np.float64), rmse=df[C.RMSE].to_numpy(np.float64),
                               rmse_per_image=df[C.RMSE_PER_IMAGE].to_numpy(np.float64))


@dataclass(frozen=True)
class RunInputs:
    """What one `report` argument holds (or one model's share of it, after `split_by_model`). Every field
    but `path`, `name` and `kind` may be None."""

    path: Path
    name: str
    kind: str  # "run", "nll", "fid" or "rate-distortion"
    config: RunConfigFile | None = None
    nll_train: Part[NllSummary] | None = None
    nll_test: Part[NllSummary] | None = None
    gap_nll_train: Part[NllSummary] | None = None  # the importance-sampled bounds of `gap_terms`
    gap_nll_test: Part[NllSummary] | None = None
    ode_train: Part[NllSummary] | None = None  # the probability-flow ODE likelihoods of `[evaluation.ode]`
    ode_test: Part[NllSummary] | None = None
    continuous_train: Part[NllSummary] | None = None  # the continuous-time bounds of `[evaluation.continuous]`
    continuous_test: Part[NllSummary] | None = None
    nll_unknown_split: bool = False  # a plain nll dir whose data is not a :train / :test split
    gap: Part[GapResult] | None = None
    rate_distortion: Part[RateDistortionSummary] | None = None
    samples: Part[SampleManifest] | None = None
    fid: Part[FidMetrics] | None = None
    split_from: int = 1  # how many model rows the argument was split into (1: not split)

    def parts(self) -> list[Part]:
        return [p for p in (getattr(self, n) for n in PARTS) if p is not None]

    def keys(self) -> set[str]:
        """The runs this input holds (`Part.key`), and its config by content."""
        keys = {p.key for p in self.parts()}
        if self.config is not None:
            keys.add(f"config:{self.config.sha256}")
        return keys

    def nll_outputs(self, split: str) -> list[Part[NllSummary]]:
        """Every nll output of `split` ("test" or "train") the input holds, of any quantity."""
        return [p for p in (getattr(self, n) for n in NLL_PARTS[split]) if p is not None]

    def best_nll(self, split: str, column: str) -> Part[NllSummary] | None:
        """The most precise nll output of `split` that Table 1 shows in its `column` set
        (`estimators.column_of`: the discrete bound, the continuous bound, the ODE likelihood)."""
        return most_precise([p for p in self.nll_outputs(split) if column_of(p.output) == column])

    @property
    def model(self) -> ModelIdentity | None:
        """The one model identity of its parts; None when they have none (or several: not yet split)."""
        ids = {p.model_sha256 for p in self.parts()}
        if len(ids) != 1:
            return None
        return next(p.identity for p in self.parts())

    # -- what the run was ------------------------------------------------------------------------------
    def _diffusion(self) -> DiffusionConfig | None:
        """The diffusion settings of the model evaluated (its identity), else of the run's config."""
        for d in (self.model and self.model.diffusion, self.config and self.config.diffusion):
            if d:
                try:
                    return DiffusionConfig(**d)
                except (TypeError, ValueError):
                    continue
        return None

    @property
    def mean_type(self) -> str | None:
        d = self._diffusion()
        return d.mean_type if d else None

    @property
    def var_type(self) -> str | None:
        d = self._diffusion()
        return d.var_type if d else None

    @property
    def T(self) -> int | None:
        d = self._diffusion()
        return d.T if d else None

    @property
    def objective(self) -> str | None:
        return self.config.objective if self.config else None

    @property
    def data(self) -> str | None:
        """The training data of a run (config), else the data its nll, fid or rate-distortion outputs name."""
        if self.config and self.config.data:
            return self.config.data
        for nll in (self.nll_train, self.nll_test):
            if nll is not None:
                return nll.output.data
        if self.fid is not None:
            return self.fid.output.ref
        if self.rate_distortion is not None:
            return self.rate_distortion.output.data
        return None

    @property
    def label(self) -> str:
        """The directory name and, when known, the short model identity of its outputs."""
        m = self.model
        return self.name + (f" [model {m.short()}]" if m is not None else "")


DATASET_NAMES = {"cifar10": "CIFAR-10", "lsun_bedroom": "LSUN Bedroom", "lsun_church": "LSUN Church",
                 "lsun_cat": "LSUN Cat", "celebahq": "CelebA-HQ"}


def dataset_name(data: str | None) -> str | None:
    """The data set a data source is of, as a report names it: the paper's name for the paper's data sets
    ("CIFAR-10"), else the source without its ":train"/":test" split (a file or folder by its name alone)."""
    if not data:
        return None
    known = dataset_of(data)
    if known is not None:
        return DATASET_NAMES[known]
    base = data.rsplit(":", 1)[0] if source_split(data) else data
    return Path(base).name if os.path.isabs(base) else base


def dataset_of(data: str | None) -> str | None:
    """The paper's data set a data source names: "cifar10", "lsun_bedroom", "lsun_church", "lsun_cat",
    "celebahq", or None."""
    if not data:
        return None
    s = "".join(ch for ch in data.lower() if ch.isalnum())
    if "cifar10" in s:
        return "cifar10"
    if "celebahq" in s:
        return "celebahq"
    if "lsun" in s:
        for name in ("bedroom", "church", "cat"):
            if name in s:
                return f"lsun_{name}"
    return None


# -- reading one argument ------------------------------------------------------------------------------------

def read_run(path: str | Path) -> RunInputs:
    """Read one `report` argument (a run, nll, fid or rate-distortion directory), every file checked."""
    path = Path(path)
    if not path.is_dir():
        raise ReportInputError(f"{given('run_dirs', path)}: not a directory")
    name = path.resolve().name
    if (path / RateDistortionSummary.CURVE).is_file() and (path / RateDistortionSummary.FILE).is_file():
        rd = _read_part("rate_distortion", RateDistortionSummary, path)
        return RunInputs(path=path, name=name, kind="rate-distortion", rate_distortion=rd,
                         nll_test=_nll_of_rate_distortion(rd))
    if (path / NllSummary.FILE).is_file():
        nll = _nll("nll", path)
        split = source_split(nll.output.data)
        if split == "train":
            return RunInputs(path=path, name=name, kind="nll", nll_train=replace(nll, name="nll_train"))
        return RunInputs(path=path, name=name, kind="nll", nll_test=replace(nll, name="nll_test"),
                         nll_unknown_split=split is None)
    if (path / FidMetrics.FILE).is_file() and not (path / RunConfigFile.FILE).is_file():
        return RunInputs(path=path, name=name, kind="fid", fid=_read_part("fid", FidMetrics, path))
    layout = ReproduceLayout(path)
    run = RunInputs(
        path=path, name=name, kind="run",
        config=RunConfigFile.read(path) if layout.config.is_file() else None,
        nll_train=_if_there("nll_train", NllSummary, layout.nll_train),
        nll_test=_if_there("nll_test", NllSummary, layout.nll_test),
        gap_nll_train=_if_there("gap_nll_train", NllSummary, layout.gap_nll_train),
        gap_nll_test=_if_there("gap_nll_test", NllSummary, layout.gap_nll_test),
        ode_train=_if_there("ode_train", NllSummary, layout.ode_train),
        ode_test=_if_there("ode_test", NllSummary, layout.ode_test),
        continuous_train=_if_there("continuous_train", NllSummary, layout.continuous_train),
        continuous_test=_if_there("continuous_test", NllSummary, layout.continuous_test),
        gap=_if_there("gap", GapResult, layout.gap.parent),
        rate_distortion=_if_there("rate_distortion", RateDistortionSummary, layout.rate_distortion),
        samples=_if_there("samples", SampleManifest, layout.samples),
        fid=_if_there("fid", FidMetrics, layout.fid),
    )
    if run.config is None and not run.parts():
        raise ReportInputError(
            f"{given('run_dirs', path)}: holds no finished output ({RunConfigFile.FILE}, {layout.nll_train.name}/, "
            f"{layout.nll_test.name}/, {layout.gap.name}, {layout.rate_distortion.name}/, {layout.fid.name}/) "
            "and is no nll, fid or rate-distortion output")
    _check_run_consistency(run)
    return run


def _nll_of_rate_distortion(rd: Part[RateDistortionSummary]) -> Part[NllSummary] | None:
    """The nll output a plain rate-distortion output was computed from, when it is still where it was and
    still the same run."""
    folder = Path(rd.output.nll_dir)
    if not (folder / NllSummary.FILE).is_file():
        return None
    nll = _nll("nll_test", folder)
    if nll.output.run_id != rd.output.nll_run_id:
        warn(f"{folder} (named by {rd.file}) now holds another nll run (run_id {short(nll.output.run_id)}, "
             f"not {short(rd.output.nll_run_id)}); its NLL is not shown with {rd.folder}")
        return None
    return nll


def _gap_bound_run_ids(layout: ReproduceLayout) -> tuple[str, str] | None:
    """The run ids of the importance-sampled bounds a reproduce run computed for its gap (`gap_terms`)."""
    try:
        return read_summary(layout.gap_nll_train).run_id, read_summary(layout.gap_nll_test).run_id
    except OutputFileError:
        return None


def _check_run_consistency(run: RunInputs) -> None:
    """Warn when gap.json or rate_distortion/ were computed from other nll runs than those beside them."""
    test, train = run.nll_test, run.nll_train
    if run.gap is not None and test is not None and train is not None:
        g = run.gap.output
        if (g.train_run_id, g.test_run_id) not in ((train.output.run_id, test.output.run_id),
                                                   _gap_bound_run_ids(ReproduceLayout(run.path))):
            warn(f"{run.gap.file} was computed from other nll runs than {train.folder} and {test.folder} "
                 "(run ids differ); shown as it is")
    if run.rate_distortion is not None and test is not None and \
            run.rate_distortion.output.nll_run_id != test.output.run_id:
        warn(f"{run.rate_distortion.folder} was computed from another nll run than {test.folder} "
             f"(run_id {short(run.rate_distortion.output.nll_run_id)}, not {short(test.output.run_id)}); shown as it is")
    if run.config is not None and run.model is not None:
        mine = run.model.diffusion
        theirs = run.config.diffusion
        diff = [f"{k} {theirs.get(k)!r} -> {mine.get(k)!r}" for k in sorted(mine) if mine.get(k) != theirs.get(k)]
        if diff:
            warn(f"{run.path / RunConfigFile.FILE} and the model evaluated ({run.model.short()}) differ in "
                 f"diffusion settings ({'; '.join(diff[:3])}); the tables use the model's")


# -- every argument: each run once, one model per row -------------------------------------------------------

def read_inputs(paths: list[str | Path]) -> list[RunInputs]:
    """Read every argument (the same directory once), count each run once, and split mixed-model inputs."""
    runs, seen = [], {}
    for p in paths:
        real = os.path.realpath(p)
        if real in seen:
            again = "given twice" if str(p) == str(seen[real]) else f"is {seen[real]} again"
            warn(f"{p} {again}; read once")
            continue
        seen[real] = p
        runs.append(read_run(p))
    return [row for run in deduplicate(runs) for row in split_by_model(run)]


def deduplicate(runs: list[RunInputs]) -> list[RunInputs]:
    """Each run once. An input whose runs (`RunInputs.keys`) are all held by another input is dropped
    (in favour of the one that holds more, else the first); a part two remaining inputs share is kept in
    the first only. Each drop is a warning."""
    keys = [r.keys() for r in runs]
    kept = []
    for i, run in enumerate(runs):
        cover = next((j for j in range(len(runs)) if j != i and keys[i] <= keys[j]
                      and (keys[i] < keys[j] or j < i)), None)
        if cover is None:
            kept.append(run)
            continue
        same = "the same runs as" if keys[i] == keys[cover] else "only runs also in"
        warn(f"{run.path} holds {same} {runs[cover].path} ({_keys_text(keys[i])}); counted once, from "
             f"{runs[cover].path}")
    out, where = [], {}
    for run in kept:
        strip = {}
        for part in run.parts():
            if part.key in where:
                warn(f"{part.file} is the run already read from {where[part.key]} "
                     f"({_keys_text({part.key})}); counted once, from {where[part.key]}")
                strip[part.name] = None
            else:
                where[part.key] = part.file
        out.append(replace(run, **strip) if strip else run)
    return out


def _keys_text(keys: set[str], limit: int = 3) -> str:
    items = sorted(keys)
    text = ", ".join(f"{k.split(':', 1)[0]} {short(k.split(':', 1)[1])}" for k in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def split_by_model(run: RunInputs) -> list[RunInputs]:
    """`run` itself when its parts come from at most one model identity; otherwise one RunInputs per
    identity (a FID without identity is a group of its own), each with only that model's parts and the
    run's config, and a one-line warning naming which parts belong to which model."""
    groups: dict[str | None, list[str]] = {}
    for part in run.parts():
        groups.setdefault(part.model_sha256, []).append(part.name)
    if len(groups) <= 1:
        return [run]
    text = "; ".join(f"{', '.join(names)}: model {short(sha)}" for sha, names in groups.items())
    warn(f"{run.path}: outputs of {len(groups)} different models ({text}); shown as {len(groups)} rows, "
         "one per model, never merged")
    part_names = {f.name for f in fields(RunInputs)} & set(PARTS)
    return [replace(run, split_from=len(groups), **{n: getattr(run, n) if n in names else None for n in part_names})
            for names in groups.values()]
