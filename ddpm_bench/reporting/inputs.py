"""Readers for the outputs of the other commands, for `rate-distortion` and `report`.

A `report` input is one of
- a `reproduce` run directory: `config.json`, `nll_test/`, `nll_train/`, `gap.json`, `rate_distortion/`,
  `fid/metrics.json`, `samples/manifest.json` (whichever exist);
- a plain `nll` output (`summary.json` with `total_bpd`, `per_image.npz`, `terms.csv`);
- a plain `fid` output (`metrics.json`);
- a plain `rate-distortion` output (`curve.csv` and its `summary.json`).
Whatever is missing stays None; nothing is filled in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ddpm_bench.errors import UserError
from ddpm_bench.rate_distortion import RateDistortionCurve
from ddpm_bench.reporting import columns as C

# names inside a reproduce run directory and inside the outputs of single commands
RUN_CONFIG = "config.json"
NLL_TEST_DIR = "nll_test"
NLL_TRAIN_DIR = "nll_train"
GAP_FILE = "gap.json"
RATE_DISTORTION_DIR = "rate_distortion"
FID_DIR = "fid"
SAMPLES_DIR = "samples"
NLL_SUMMARY = "summary.json"
NLL_PER_IMAGE = "per_image.npz"
FID_METRICS = "metrics.json"
SAMPLES_MANIFEST = "manifest.json"
CURVE_FILE = "curve.csv"
RD_SUMMARY = "summary.json"
RD_COMMAND = "rate-distortion"


class ReportInputError(UserError):
    """A run, nll, fid or rate-distortion directory that is missing or malformed."""


def read_json_file(path: Path) -> dict:
    """A JSON object from `path`; ReportInputError naming the file when it is unreadable."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ReportInputError(f"{path}: cannot read JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ReportInputError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _optional_json(path: Path) -> dict | None:
    return read_json_file(path) if path.is_file() else None


@dataclass(frozen=True)
class NllOutput:
    """An `nll` output directory: its summary.json (and where per_image.npz is)."""

    path: Path
    summary: dict

    @property
    def per_image_path(self) -> Path:
        return self.path / NLL_PER_IMAGE


def is_nll_dir(path: Path) -> bool:
    if not (path / NLL_SUMMARY).is_file():
        return False
    return "total_bpd" in read_json_file(path / NLL_SUMMARY)


def read_nll_output(path: Path) -> NllOutput | None:
    """The nll output in `path`, or None when it holds no finished nll summary."""
    return NllOutput(path=path, summary=read_json_file(path / NLL_SUMMARY)) if is_nll_dir(path) else None


def load_per_image(nll_dir: str | Path) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """(summary, terms (N, T+1) float64 bits/dim, mse (N, T) float64 or None) of an nll output.

    ReportInputError (exit 2) naming the file when summary.json or per_image.npz is missing, or the arrays
    have the wrong shapes or do not match the summary's T and n_images.
    """
    nll_dir = Path(nll_dir)
    if not nll_dir.is_dir():
        raise ReportInputError(f"NLL_DIR {nll_dir}: not a directory")
    summary_path, npz_path = nll_dir / NLL_SUMMARY, nll_dir / NLL_PER_IMAGE
    if not summary_path.is_file():
        raise ReportInputError(f"NLL_DIR {nll_dir}: no {NLL_SUMMARY} (is it a finished `ddpm-bench nll` output?)")
    if not npz_path.is_file():
        raise ReportInputError(f"{npz_path}: missing (is {nll_dir} a finished `ddpm-bench nll` output?)")
    summary = read_json_file(summary_path)
    try:
        with np.load(npz_path) as z:
            if "terms" not in z.files:
                raise ReportInputError(f"{npz_path}: has no array 'terms' (arrays: {', '.join(z.files) or 'none'})")
            terms = np.asarray(z["terms"], dtype=np.float64)
            mse = np.asarray(z["mse"], dtype=np.float64) if "mse" in z.files else None
    except (OSError, ValueError) as e:
        raise ReportInputError(f"{npz_path}: cannot read ({e})") from None
    if terms.ndim != 2 or terms.shape[0] < 1 or terms.shape[1] < 2:
        raise ReportInputError(f"{npz_path}: 'terms' must be (N, T+1) with N, T >= 1, got shape {terms.shape}")
    n, T = terms.shape[0], terms.shape[1] - 1
    if "T" in summary and summary["T"] != T:
        raise ReportInputError(f"{npz_path}: 'terms' has T + 1 = {T + 1} columns but {summary_path} says T = {summary['T']}")
    if "n_images" in summary and summary["n_images"] != n:
        raise ReportInputError(f"{npz_path}: 'terms' has {n} rows but {summary_path} says n_images = {summary['n_images']}")
    if mse is not None and mse.shape != (n, T):
        raise ReportInputError(f"{npz_path}: 'mse' must be (N, T) = ({n}, {T}) to match 'terms', got shape {mse.shape}")
    if not np.all(np.isfinite(terms)):
        raise ReportInputError(f"{npz_path}: 'terms' holds non-finite values")
    if mse is not None and (not np.all(np.isfinite(mse)) or np.any(mse < 0)):
        raise ReportInputError(f"{npz_path}: 'mse' holds negative or non-finite values")
    return summary, terms, mse


def is_rate_distortion_dir(path: Path) -> bool:
    if not ((path / CURVE_FILE).is_file() and (path / RD_SUMMARY).is_file()):
        return False
    return read_json_file(path / RD_SUMMARY).get(C.SUMMARY_COMMAND) == RD_COMMAND


def read_curve(path: Path) -> RateDistortionCurve:
    """A `curve.csv` written by `rate-distortion` (columns CURVE_COLUMNS) as a RateDistortionCurve."""
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise ReportInputError(f"{path}: cannot read ({e})") from None
    missing = [c for c in C.CURVE_COLUMNS if c not in df.columns]
    if missing or len(df) == 0:
        raise ReportInputError(f"{path}: expected columns {','.join(C.CURVE_COLUMNS)} and rows, missing {missing}")
    df = df.sort_values(C.REVERSE_TIME)
    return RateDistortionCurve(t=df[C.T].to_numpy(np.int64), reverse_time=df[C.REVERSE_TIME].to_numpy(np.int64),
                               rate_bpd=df[C.RATE_BPD].to_numpy(np.float64), rmse=df[C.RMSE].to_numpy(np.float64),
                               rmse_per_image=df[C.RMSE_PER_IMAGE].to_numpy(np.float64))


@dataclass(frozen=True)
class RunInputs:
    """What one `report` argument holds. Every field but `path`, `name` and `kind` may be None."""

    path: Path
    name: str
    kind: str  # "run", "nll", "fid" or "rate-distortion"
    config: dict | None = None
    nll_test: NllOutput | None = None
    nll_train: NllOutput | None = None
    nll_unknown_split: bool = False  # a plain nll dir whose data is not a :train / :test split
    gap: dict | None = None
    fid: dict | None = None
    fid_path: Path | None = None
    samples_manifest: dict | None = None
    rate_distortion: Path | None = None  # a rate-distortion output directory
    rate_distortion_summary: dict | None = None

    # -- what the run was: from its config, else from its nll summaries; None when nobody says ----------
    def _setting(self, section: str, key: str):
        if self.config and isinstance(self.config.get(section), dict) and key in self.config[section]:
            return self.config[section][key]
        for nll in (self.nll_test, self.nll_train):
            if nll is not None and key in nll.summary:
                return nll.summary[key]
        if self.rate_distortion_summary and key in self.rate_distortion_summary:
            return self.rate_distortion_summary[key]
        return None

    @property
    def mean_type(self) -> str | None:
        return self._setting("diffusion", "mean_type")

    @property
    def var_type(self) -> str | None:
        return self._setting("diffusion", "var_type")

    @property
    def T(self) -> int | None:
        return self._setting("diffusion", "T")

    @property
    def objective(self) -> str | None:
        if self.config and isinstance(self.config.get("training"), dict):
            return self.config["training"].get("objective")
        return None

    @property
    def data(self) -> str | None:
        """The training data of a run (config), else the data its nll or fid outputs name."""
        if self.config and "data" in self.config:
            return data_name(self.config["data"])
        for nll in (self.nll_train, self.nll_test):
            if nll is not None and nll.summary.get("data"):
                return str(nll.summary["data"])
        if self.fid and self.fid.get("ref"):
            return str(self.fid["ref"])
        if self.rate_distortion_summary and self.rate_distortion_summary.get("data"):
            return str(self.rate_distortion_summary["data"])
        return None

    @property
    def model_sha256(self) -> str | None:
        for obj in (self.nll_test and self.nll_test.summary, self.nll_train and self.nll_train.summary,
                    self.rate_distortion_summary, self.samples_manifest):
            if obj and isinstance(obj.get("model"), dict) and obj["model"].get("sha256"):
                return obj["model"]["sha256"]
        return None


def data_name(data) -> str:
    """A data setting of a config as one string: a string as is, a dict by its first naming key."""
    if isinstance(data, str):
        return data
    if isinstance(data, dict):
        for key in ("name", "source", "train", "data", "path"):
            if isinstance(data.get(key), str):
                return data[key]
    return json.dumps(data, sort_keys=True)


def split_of(data: str | None) -> str | None:
    """"train" / "test" for a `name:split` data source, None otherwise."""
    if data and ":" in data:
        split = data.rsplit(":", 1)[1]
        if split in ("train", "test"):
            return split
    return None


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


def read_run(path: str | Path) -> RunInputs:
    """Read one `report` argument (a run, nll, fid or rate-distortion directory)."""
    path = Path(path)
    if not path.is_dir():
        raise ReportInputError(f"RUN_DIR {path}: not a directory")
    name = path.resolve().name
    if is_nll_dir(path):
        nll = read_nll_output(path)
        split = split_of(nll.summary.get("data"))
        if split == "train":
            return RunInputs(path=path, name=name, kind="nll", nll_train=nll)
        return RunInputs(path=path, name=name, kind="nll", nll_test=nll, nll_unknown_split=split is None)
    if is_rate_distortion_dir(path):
        summary = read_json_file(path / RD_SUMMARY)
        nll_dir = summary.get(C.SUMMARY_NLL_DIR)
        nll = read_nll_output(Path(nll_dir)) if nll_dir and Path(nll_dir).is_dir() else None
        return RunInputs(path=path, name=name, kind="rate-distortion", nll_test=nll, rate_distortion=path,
                         rate_distortion_summary=summary)
    if (path / FID_METRICS).is_file() and not (path / RUN_CONFIG).is_file():
        return RunInputs(path=path, name=name, kind="fid", fid=read_json_file(path / FID_METRICS),
                         fid_path=path / FID_METRICS)
    rd = path / RATE_DISTORTION_DIR
    rd_ok = is_rate_distortion_dir(rd)
    run = RunInputs(
        path=path, name=name, kind="run",
        config=_optional_json(path / RUN_CONFIG),
        nll_test=read_nll_output(path / NLL_TEST_DIR),
        nll_train=read_nll_output(path / NLL_TRAIN_DIR),
        gap=_optional_json(path / GAP_FILE),
        fid=_optional_json(path / FID_DIR / FID_METRICS),
        fid_path=(path / FID_DIR / FID_METRICS) if (path / FID_DIR / FID_METRICS).is_file() else None,
        samples_manifest=_optional_json(path / SAMPLES_DIR / SAMPLES_MANIFEST),
        rate_distortion=rd if rd_ok else None,
        rate_distortion_summary=read_json_file(rd / RD_SUMMARY) if rd_ok else None,
    )
    if not any((run.config, run.nll_test, run.nll_train, run.gap, run.fid, run.rate_distortion)):
        raise ReportInputError(
            f"RUN_DIR {path}: holds none of {RUN_CONFIG}, {NLL_TEST_DIR}/, {NLL_TRAIN_DIR}/, {GAP_FILE}, "
            f"{FID_DIR}/{FID_METRICS}, {RATE_DISTORTION_DIR}/ and is no nll, fid or rate-distortion output"
        )
    return run
