"""Every output file as a typed object: its file name, an atomic `write`, and a `read` that validates.

A `read` checks every field against its type and raises `OutputFileError` (exit 2), one line naming
the file and the field. No other module spells an output's file name or reads its keys from a raw dict:
writers build these objects, readers get them back.

Outputs: the nll summary (`summary.json`) and per-image terms (`per_image.npz`), the sample manifest
(`manifest.json`), the FID metrics (`metrics.json`), the rate-distortion summary (`summary.json` beside
`curve.csv`), the gap result (`gap.json`), the layout of a `reproduce` run directory and its `config.json`
(`RunConfigFile`, read back by `report`).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from ddpm_bench.data_sources import one_distribution
from ddpm_bench.errors import UserError
from ddpm_bench.identity import ModelIdentity, sha256_json
from ddpm_bench.shards import (
    CONTENT,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npz,
    file_sha256,
    json_sha256,
    to_json,
)
from ddpm_bench.typecheck import Mismatch, conform, type_ok


class OutputFileError(UserError):
    """An output file that is missing, unreadable, or has a field of the wrong type."""


def read_json_object(path: Path) -> dict:
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise OutputFileError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise OutputFileError(f"{path}: unreadable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise OutputFileError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


class OfModel:
    """An output with a `model` field (provenance and `identity`, checked by `model_sha256_of` on read)."""

    model: dict

    @property
    def model_sha256(self) -> str:
        return self.model["identity"]["sha256"]


HASHED_SINCE = (0, 3)  # the first version whose JSON outputs carry `content_sha256` (0.2 called itself 0.1.0)


def version_tuple(text: Any) -> tuple[int, ...] | None:
    """(major, minor, ...) of a version string such as "0.3.0" or "0.3.0.dev1"; None when it is none."""
    if not isinstance(text, str):
        return None
    parts = []
    for piece in text.split("."):
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts) if len(parts) >= 2 else None


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


class JsonOutput:
    """Base of the JSON outputs: a dataclass whose fields are the file's keys (extra keys are kept in
    `extra` and written back, so provenance the reader does not use survives). Every file carries its own
    content hash (`content_sha256`, of its other keys), checked when it is read: a number edited since it
    was written is refused by name. A file of a version before content hashes (0.2) is recognised by its
    version (`VERSION`; a file without one by carrying none of the keys written since, `SINCE_HASHES`) and
    read as it is; any other file without its hash, or without its sibling files (`RECORDS`) in `files`,
    is refused: its content check was removed, so its content is not known to be what was written."""

    FILE: ClassVar[str]
    HASHED: ClassVar[bool] = True  # written with content_sha256 (config.json, a resolved recipe, is not)
    VERSION: ClassVar[tuple[str, ...] | None] = None  # where the file keeps the ddpm-bench version that wrote it
    SINCE_HASHES: ClassVar[tuple[str, ...]] = ()  # keys that only versions with content hashes write
    RECORDS: ClassVar[tuple[str, ...]] = ()  # sibling files its `files` must record (their sha256)
    extra: dict

    @classmethod
    def before_content_hashes(cls, obj: dict) -> bool:
        """Whether `obj` was written by a version before content hashes (0.2): its version says so (or,
        for a file that never carried one, it has none of the keys written since)."""
        if any(k in obj for k in (CONTENT, *cls.SINCE_HASHES)):
            return False
        if cls.VERSION is None:
            return True
        version = version_tuple(_at(obj, cls.VERSION))
        return version is not None and version < HASHED_SINCE

    @classmethod
    def check_content(cls, obj: dict, path: Path | str) -> None:
        """The content check of a file: its `content_sha256` there and right, its siblings recorded."""
        if CONTENT not in obj:
            if cls.HASHED and not cls.before_content_hashes(obj):
                raise OutputFileError(f"{path}: field '{CONTENT}' is missing (its content check; every output of "
                                      "ddpm-bench 0.3 or later carries one): changed since; compute it again")
            return
        if obj[CONTENT] != json_sha256(obj):
            raise OutputFileError(f"{path}: its content is not what was written (its content_sha256 differs): "
                                  "changed since; compute it again")
        files = obj.get("files")
        missing = [name for name in cls.RECORDS if not isinstance(files, dict) or name not in files]
        if missing:
            raise OutputFileError(f"{path}: field 'files' does not record {missing[0]} (its content check): "
                                  "changed since; compute it again")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        d = {**{k: v for k, v in self.extra.items() if k != CONTENT}, **json.loads(to_json(d))}
        return {**d, CONTENT: json_sha256(d)}

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / self.FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, obj: dict, path: Path | str = "<memory>"):
        command = getattr(cls, "COMMAND", None)
        if command is not None and obj.get("command") != command:  # which output it is, before its fields
            if "command" not in obj:
                raise OutputFileError(f"{path}: field 'command' is missing (not a '{command}' output)")
            raise OutputFileError(f"{path}: is a {obj['command']!r} output, not a '{command}' output (field 'command')")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            if f.name not in obj:  # a field added since the file was written takes its default
                if f.default is not MISSING:
                    values[f.name] = f.default
                    continue
                if f.default_factory is not MISSING:
                    values[f.name] = f.default_factory()
                    continue
                raise OutputFileError(f"{path}: field '{f.name}' is missing")
            try:
                values[f.name] = conform(obj[f.name], hints[f.name])
            except Mismatch as e:
                raise OutputFileError(f"{path}: field '{f.name}' is {e}") from None
        cls.check_content(obj, path)  # after the types: a wrong one is named first
        known = {f.name for f in fields(cls)} | {CONTENT}
        out = cls(**values, extra={k: v for k, v in obj.items() if k not in known})
        out.check(Path(path))
        return out

    @classmethod
    def read(cls, folder: str | Path):
        """The file in `folder`, checked; with `RECORDS`, the sibling files it records checked too."""
        path = Path(folder) / cls.FILE
        out = cls.from_dict(read_json_object(path), path)
        if cls.RECORDS:
            verify_files(folder, out.files, str(path))
        return out

    def check(self, path: Path) -> None:
        """Checks across fields (subclasses); raise OutputFileError naming the file and field."""


def record_files(folder: str | Path, names: list[str]) -> dict[str, str]:
    """{name: sha256} of files just written in `folder`, for the JSON output that lists them."""
    return {name: file_sha256(Path(folder) / name) for name in names}


def verify_files(folder: str | Path, files: dict, recorded_in: str) -> None:
    """Every file the JSON output `recorded_in` lists is there and holds what was written; OutputFileError
    naming the first that does not."""
    for name, sha in files.items():
        path = Path(folder) / name
        if not path.is_file():
            raise OutputFileError(f"{path}: missing (listed in {recorded_in})")
        if file_sha256(path) != sha:
            raise OutputFileError(f"{path}: its content is not what was written (its sha256 differs from the one "
                                  f"{recorded_in} recorded): changed since")


def model_sha256_of(model: dict, path: Path, name: str = "model") -> str:
    """The model identity inside a `model` field; OutputFileError when it has none."""
    ident = model.get("identity") if isinstance(model, dict) else None
    sha = ident.get("sha256") if isinstance(ident, dict) else None
    if not isinstance(sha, str) or len(sha) != 64:
        raise OutputFileError(f"{path}: field '{name}.identity.sha256' is missing (written before model identities "
                              "existed?); compute it again")
    return sha


# -- nll ------------------------------------------------------------------------------------------------------

PER_IMAGE_FILE = "per_image.npz"  # each estimator's per-image parts, beside summary.json

@dataclass(frozen=True, kw_only=True)
class NllSummary(OfModel, JsonOutput):
    """`summary.json` of `nll`, the fields every estimator writes (bits/dim); written last, so its presence
    marks a finished run. Each estimator's summary extends it with its named parts (`BoundSummary`,
    `ImportanceSummary`, ...); `ddpm_bench.estimators.read_output` reads the one its `estimator` names."""

    FILE: ClassVar[str] = "summary.json"
    COMMAND: ClassVar[str] = "nll"
    VERSION: ClassVar[tuple[str, ...]] = ("ddpm_bench_version",)
    SINCE_HASHES: ClassVar[tuple[str, ...]] = ("files", "quantity")
    RECORDS: ClassVar[tuple[str, ...]] = (PER_IMAGE_FILE,)  # the per-image parts every estimator writes

    run_id: str
    estimator: str = "exact"  # the estimator's name (ddpm_bench.estimators)
    quantity: str = "bound"  # "bound": an upper bound on -log p; "likelihood": -log p itself
    total_bpd: float
    total_bpd_stderr: float | None  # over images: every estimate's own noise included
    n_images: int
    dims: int
    T: int
    data: str
    data_sha256: str
    seed: int
    precision: str
    mean_type: str
    var_type: str
    model: dict  # provenance and `identity` (ddpm_bench.identity.ModelIdentity)
    diffusion: dict
    ddpm_bench_version: str
    seconds: float  # wall time of the evaluation itself, whatever it took (a pilot included)
    network_evals: int  # every network evaluation made, a pilot included
    files: dict = field(default_factory=dict)  # {name: sha256} of the per-image files beside it (when written)
    command: str = "nll"
    extra: dict = field(default_factory=dict)

    def check(self, path: Path) -> None:
        model_sha256_of(self.model, path)
        if self.n_images < 1 or self.T < 0 or self.dims < 1:  # T = 0: a model of continuous time (VDM's word)
            raise OutputFileError(f"{path}: fields 'n_images', 'dims' must be >= 1 and 'T' >= 0")

    def steps_text(self) -> str:
        """The time of the estimate in words: the model's T steps, or continuous time."""
        return f"T={self.T}" if self.T else "continuous time"


@dataclass(frozen=True, kw_only=True)
class BoundSummary(NllSummary):
    """The variational bound's parts: L_T (prior), L_1..L_{T-1}, L_0 (decoder) and the rate L_1..L_T."""

    prior_bpd: float
    kl_bpd: float
    decoder_bpd: float
    rate_bpd: float
    rate_bpd_stderr: float | None
    decoder_bpd_stderr: float | None
    draws: int
    clip: bool
    decoder_cdf: str
    bound: dict  # the estimator's options, whole
    TERMS_CSV: ClassVar[str] = "terms.csv"  # term,bpd_mean,bpd_stderr,mse_mean beside it


@dataclass(frozen=True, kw_only=True)
class ImportanceSummary(BoundSummary):
    """The importance-sampled bound: K drawn KL terms per image and where their proposal came from."""

    terms_per_image: int
    proposal: dict


@dataclass(frozen=True)
class PerImage:
    """`per_image.npz` of `nll`: `terms` float64 (N, T+1) bits/dim, `mse` float64 (N, T) (squared error of
    the x0 prediction, model scale), `index` int64 (N,) data-set indices, `run_id` of the nll run, and
    for `--terms K` `drawn` int64 (N, T+1), how often each term was evaluated (its `terms` entries are
    weighted by 1/(K q(k)), its `mse` is NaN where a term was not drawn). The exact bound evaluates every
    term once and stores no `drawn` (None), which would double the file for a whole data set."""

    FILE: ClassVar[str] = PER_IMAGE_FILE

    terms: np.ndarray
    mse: np.ndarray
    index: np.ndarray
    run_id: str
    drawn: np.ndarray | None = None  # None: every term evaluated once (the exact bound)

    @property
    def totals(self) -> np.ndarray:
        """(N,) each image's estimate of the bound, bits/dim."""
        return self.terms.sum(1)

    @property
    def exact(self) -> bool:
        """Every term evaluated for every image (not importance sampled)."""
        return self.drawn is None or bool(np.all(self.drawn == 1))

    def means(self) -> dict[str, np.ndarray]:
        """The summary's parts that are means over images, each with its (N,) per-image values, bits/dim."""
        T = self.terms.shape[1] - 1
        return {"total_bpd": self.totals, "prior_bpd": self.terms[:, T], "kl_bpd": self.terms[:, 1:T].sum(1),
                "decoder_bpd": self.terms[:, 0], "rate_bpd": self.terms[:, 1:].sum(1)}

    def write(self, folder: str | Path) -> list[str]:
        """per_image.npz, and terms.csv from it; the names of the files written."""
        drawn = {} if self.drawn is None else {"drawn": self.drawn.astype(np.int64)}
        atomic_write_npz(Path(folder) / self.FILE, terms=self.terms, mse=self.mse, index=self.index.astype(np.int64),
                         run_id=np.array(self.run_id), **drawn)
        atomic_write_bytes(Path(folder) / BoundSummary.TERMS_CSV, terms_csv(self.terms, self.mse, self.drawn).encode())
        return [self.FILE, BoundSummary.TERMS_CSV]

    @classmethod
    def read(cls, folder: str | Path, summary: BoundSummary | None = None) -> PerImage:
        """Read and check shapes, dtypes and finiteness; with `summary`, that both belong to one run."""
        path = Path(folder) / cls.FILE
        z = read_npz(path, ("terms", "mse", "index", "run_id"), optional=("drawn",))
        terms, mse, index, run_id, drawn = z["terms"], z["mse"], z["index"], str(z["run_id"]), z.get("drawn")
        if terms.dtype != np.float64 or terms.ndim != 2 or terms.shape[0] < 1 or terms.shape[1] < 2:
            raise OutputFileError(f"{path}: field 'terms' must be float64 (N, T+1), got {terms.dtype} {terms.shape}")
        n, T = terms.shape[0], terms.shape[1] - 1
        if mse.dtype != np.float64 or mse.shape != (n, T):
            raise OutputFileError(f"{path}: field 'mse' must be float64 ({n}, {T}), got {mse.dtype} {mse.shape}")
        if index.dtype != np.int64 or index.shape != (n,):
            raise OutputFileError(f"{path}: field 'index' must be int64 ({n},), got {index.dtype} {index.shape}")
        if drawn is not None and (drawn.dtype != np.int64 or drawn.shape != terms.shape or np.any(drawn < 0)):
            raise OutputFileError(f"{path}: field 'drawn' must be int64 counts ({n}, {T}+1), got {drawn.dtype} "
                                  f"{drawn.shape}")
        if not np.all(np.isfinite(terms)):
            raise OutputFileError(f"{path}: field 'terms' holds non-finite values")
        evaluated = np.ones(mse.shape, dtype=bool) if drawn is None else drawn[:, :T] > 0
        if not np.all(np.isfinite(mse[evaluated])) or np.any(mse[evaluated] < 0) or \
                not np.all(np.isnan(mse[~evaluated])):
            raise OutputFileError(f"{path}: field 'mse' holds negative or non-finite values where a term was "
                                  "evaluated (or a value where none was)")
        if summary is not None:
            if run_id != summary.run_id:
                raise OutputFileError(f"{path}: field 'run_id' is not that of {NllSummary.FILE} beside it "
                                      "(files of two runs)")
            if (n, T) != (summary.n_images, summary.T):
                raise OutputFileError(f"{path}: field 'terms' is ({n}, {T}+1) but {NllSummary.FILE} says "
                                      f"n_images = {summary.n_images}, T = {summary.T}")
        return cls(terms=terms, mse=mse, index=index, run_id=run_id, drawn=drawn)


def read_npz(path: Path, fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays `fields` (and those of `optional` that are there) of an .npz output; OutputFileError naming
    the file and the first missing field, or the file as missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in fields if k not in z.files]
            if missing:
                raise OutputFileError(f"{path}: field '{missing[0]}' is missing")
            return {k: z[k] for k in (*fields, *optional) if k in z.files}
    except OutputFileError:
        raise
    except FileNotFoundError:
        raise OutputFileError(f"{path}: missing") from None
    except Exception as e:
        raise OutputFileError(f"{path}: unreadable or cut off ({type(e).__name__}: {e})") from None


def per_image_columns(path: Path, got: dict[str, np.ndarray], parts: tuple[str, ...],
                      counts: tuple[str, ...] = ("index",)) -> int:
    """N of an estimator's per-image columns, checked: each of `parts` a finite float64 (N,) in bits/dim,
    each of `counts` an int64 (N,); OutputFileError naming the file and the field otherwise."""
    n = got[parts[0]].shape[0] if got[parts[0]].ndim == 1 else -1
    for k in (*parts, *counts):
        kind = np.int64 if k in counts else np.float64
        if got[k].dtype != kind or got[k].shape != (n,) or n < 1:
            raise OutputFileError(f"{path}: field '{k}' must be {np.dtype(kind)} (N,), got {got[k].dtype} "
                                  f"{got[k].shape}")
    if not all(np.all(np.isfinite(got[k])) for k in parts):
        raise OutputFileError(f"{path}: non-finite bits/dim")
    return n


def check_same_run(path: Path, run_id: str, n: int, summary: NllSummary | None) -> None:
    """A per-image file and the summary beside it: one run, one image count."""
    if summary is not None and (run_id != summary.run_id or n != summary.n_images):
        raise OutputFileError(f"{path}: field 'run_id' or its length is not that of {NllSummary.FILE} beside it")


def stderr_of_mean(x: np.ndarray) -> float | None:
    """Standard error of the mean over images (None for a single image)."""
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None


def terms_csv(terms: np.ndarray, mse: np.ndarray, drawn: np.ndarray | None) -> str:
    """term,bpd_mean,bpd_stderr,mse_mean for term = 0..T (mse empty for T). For the importance-sampled bound
    the means are inverse-probability weighted (unbiased for each term's mean) and a term no image drew is
    blank."""
    buf = io.StringIO()
    buf.write("term,bpd_mean,bpd_stderr,mse_mean\n")
    T = terms.shape[1] - 1
    for k in range(T + 1):
        if drawn is not None and not drawn[:, k].any():
            buf.write(f"{k},,,\n")
            continue
        se = stderr_of_mean(terms[:, k])
        m = f"{np.nanmean(mse[:, k]):.17g}" if k < T else ""
        buf.write(f"{k},{terms[:, k].mean():.17g},{'' if se is None else f'{se:.17g}'},{m}\n")
    return buf.getvalue()


MEAN_RTOL, MEAN_ATOL = 1e-9, 1e-12  # a summary's mean against its per-image values: float64 rounding only


def check_summary_means(summary: NllSummary, per_image: Any, folder: Path) -> None:
    """A summary agrees with the per-image file it summarises: `n_images` is its count of images and each
    part it declares (`per_image.means()`: the total and the estimator's named parts) is the mean over
    images, to float64 rounding; OutputFileError naming both files and the field otherwise."""
    summary_path, per_image_path = folder / NllSummary.FILE, folder / per_image.FILE
    n = len(per_image.index)
    if summary.n_images != n:
        raise OutputFileError(f"{summary_path}: field 'n_images' is {summary.n_images}, but {per_image_path} holds "
                              f"{n} images: changed since; compute it again")
    for name, values in per_image.means().items():
        got, want = getattr(summary, name), float(np.mean(values))
        if not math.isclose(got, want, rel_tol=MEAN_RTOL, abs_tol=MEAN_ATOL):
            raise OutputFileError(f"{summary_path}: field '{name}' is {got!r}, but the mean over the images of "
                                  f"{per_image_path} is {want!r}: changed since; compute it again")


class PerImageParts(Protocol):
    """What every estimator's per-image parts give (`PerImage` of the bound, `OdePerImage` of the ODE):
    named arrays with one row per image."""

    FILE: ClassVar[str]
    index: np.ndarray  # (N,) int64 data-set indices
    run_id: str

    @property
    def totals(self) -> np.ndarray:  # (N,) each image's estimate, bits/dim
        ...

    def means(self) -> dict[str, np.ndarray]:  # summary field -> the per-image values it is the mean of
        ...

    def write(self, folder: str | Path) -> list[str]:
        ...


@dataclass(frozen=True)
class NllOutput:
    """A finished nll output: its summary and per-image parts, checked to belong together (read by
    `ddpm_bench.estimators.read_output`; `path` is None for a result that lives only in memory). Its
    headline numbers read off the result itself (`total_bpd`, `total_bpd_stderr`, `n_images`, `identity`);
    `summary` holds every field of summary.json, `per_image` the estimator's named arrays."""

    path: Path | None
    summary: NllSummary
    per_image: PerImageParts  # PerImage for the bound, OdePerImage for the ODE likelihood
    complete_before: bool = False  # read from a run that was already complete, not computed now

    @property
    def total_bpd(self) -> float:
        """The estimate, bits/dim, averaged over images (a bound or a likelihood: `quantity`)."""
        return self.summary.total_bpd

    @property
    def total_bpd_stderr(self) -> float | None:
        """Its standard error over images (every estimate's own noise included; None for one image)."""
        return self.summary.total_bpd_stderr

    @property
    def n_images(self) -> int:
        return self.summary.n_images

    @property
    def estimator(self) -> str:
        return self.summary.estimator

    @property
    def quantity(self) -> str:
        """"bound" (an upper bound on -log p) or "likelihood"."""
        return self.summary.quantity

    @property
    def identity(self) -> ModelIdentity:
        """The identity of the model it was computed with."""
        return ModelIdentity.from_dict(self.summary.model["identity"])

    def __repr__(self) -> str:
        s = self.summary
        se = f" +- {s.total_bpd_stderr:.5f}" if s.total_bpd_stderr is not None else ""
        where = f"; {self.path}" if self.path is not None else "; in memory"
        steps = s.steps_text()
        images = f"{s.n_images:,} image" + ("s" if s.n_images != 1 else "")
        return (f"<NllOutput {s.data}: {s.quantity} {s.total_bpd:.5f}{se} bits/dim over {images} "
                f"({s.estimator} estimator, {steps}, model {s.model_sha256[:12]}), {s.network_evals:,} network "
                f"evaluations in {s.seconds:.1f} s{where}>")

    def write(self, folder: str | Path) -> NllOutput:
        """per_image.npz (and the estimator's other files) first, then summary.json with their sha256 (its
        presence marks a finished output); the output as written."""
        names = self.per_image.write(folder)
        summary = replace(self.summary, files=record_files(folder, names))
        summary.write(folder)
        return replace(self, path=Path(folder), summary=summary)


# -- sample ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SampleManifest(OfModel, JsonOutput):
    """`manifest.json` of a sample directory: what every shard must belong to."""

    FILE: ClassVar[str] = "manifest.json"
    FORMAT: ClassVar[str] = "ddpm-bench-samples/2"  # shards carry their content hash
    LEGACY_FORMAT: ClassVar[str] = "ddpm-bench-samples/1"  # ddpm-bench 0.2: shards without one
    GRID: ClassVar[str] = "grid.png"  # the first GRID_SAMPLES samples beside it
    GRID_SAMPLES: ClassVar[int] = 64  # 8 x 8
    PROGRESSIVE_ROWS: ClassVar[int] = 8  # samples whose x0 predictions progressive.* show
    PROGRESSIVE_NPZ: ClassVar[str] = "progressive.npz"  # x0 predictions along the chain (paper Figure 6)
    PROGRESSIVE_PNG: ClassVar[str] = "progressive.png"

    format: str
    run_id: str
    model: dict
    seed: int
    num: int
    shard_size: int
    num_shards: int
    image_shape: list
    count: int
    complete: bool
    shards: list
    sampler: dict
    files: dict = field(default_factory=dict)  # {name: sha256} of grid.png and the progressive files
    outputs: list = field(default_factory=lambda: ["grid.png"])  # the files beside the shards
    network_evals: int = 0  # by the run that wrote the manifest last (a resumed run: its own part)
    seconds: float = 0.0  # its wall time
    extra: dict = field(default_factory=dict)

    @classmethod
    def before_content_hashes(cls, obj: dict) -> bool:
        """0.2's manifest is recognised by its format (its shards carry no content hash either)."""
        return obj.get("format") == cls.LEGACY_FORMAT and not any(k in obj for k in (CONTENT, "files"))

    def check(self, path: Path) -> None:
        if self.format not in (self.FORMAT, self.LEGACY_FORMAT):
            raise OutputFileError(f"{path}: field 'format' is {self.format!r}, expected {self.FORMAT!r}")
        model_sha256_of(self.model, path)
        if self.num < 1 or self.shard_size < 1 or self.num_shards != -(-self.num // self.shard_size):
            raise OutputFileError(f"{path}: fields 'num', 'shard_size', 'num_shards' do not agree")
        if len(self.image_shape) != 3 or not all(isinstance(v, int) and v >= 1 for v in self.image_shape):
            raise OutputFileError(f"{path}: field 'image_shape' must be [C, H, W], got {self.image_shape}")


def sample_shard_name(s: int) -> str:
    return f"samples_{s:06d}.npz"


# -- fid ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FidMetrics(JsonOutput):
    """`metrics.json` of `fid`. Its `fid` and `is_mean` are FID and IS only when the features are those of
    the FID Inception (`INCEPTION`: the standard weights, or the packaged TF port of the same network);
    another extractor's (the test network's) are a Frechet distance and a classifier score of its own
    features, which no FID or IS column shows (`scores_are_fid_is`, `label`)."""

    FILE: ClassVar[str] = "metrics.json"
    INCEPTION: ClassVar[tuple[str, ...]] = ("inception-v3-compat", "packaged")  # metrics.extractors' names
    # decimals of a FID that reproduce: its features pass through float32 convolutions whose rounding
    # depends on the machine's kernels and threads (the README's 197.08 came out 197.09 in a fresh clone on
    # another day); metrics.json keeps every digit
    SHOWN_DIGITS: ClassVar[int] = 1
    VERSION: ClassVar[tuple[str, ...]] = ("provenance", "versions", "ddpm_bench")

    run_id: str
    fid: float
    is_mean: float | None
    is_std: float | None
    n_samples: int
    n_ref: int
    ref: str
    samples: str
    backend: str
    feature_extractor: dict
    by_backend: dict
    warnings: list
    comparable_to_paper: bool
    samples_model: dict | None  # the `model` of the samples' manifest (with its identity), None for plain images
    is_reason: str | None = None  # why is_mean is null (None: it is not)
    extra: dict = field(default_factory=dict)

    @property
    def model_sha256(self) -> str | None:
        return None if self.samples_model is None else self.samples_model["identity"]["sha256"]

    @property
    def extractor_name(self) -> str | None:
        name = self.feature_extractor.get("name")
        return name if isinstance(name, str) else None

    @property
    def scores_are_fid_is(self) -> bool:
        """Whether `fid` is a FID and `is_mean` an IS: the features are the FID Inception's."""
        return self.extractor_name in self.INCEPTION

    @property
    def label(self) -> str:
        """What `fid` is: "FID", or "Frechet distance of NAME features" for another extractor."""
        return "FID" if self.scores_are_fid_is else f"Frechet distance of {self.extractor_name} features (not FID)"

    def check(self, path: Path) -> None:
        if self.samples_model is not None:
            model_sha256_of(self.samples_model, path, "samples_model")

    def __repr__(self) -> str:
        score = f", IS {self.is_mean:.3f} +- {self.is_std:.3f}" if self.is_mean is not None and \
            self.scores_are_fid_is else ""
        note = "" if self.comparable_to_paper else ", not comparable to the paper's"
        return (f"<FidMetrics {self.label} {self.fid:.{self.SHOWN_DIGITS}f}{score} of {self.n_samples:,} samples against {self.n_ref:,} "
                f"images of {self.ref} ({self.backend}){note}>")


# -- rate-distortion ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RateDistortionSummary(OfModel, JsonOutput):
    """`summary.json` of `rate-distortion` (beside curve.csv, table4.*, figure5.*), written last."""

    FILE: ClassVar[str] = "summary.json"
    CURVE: ClassVar[str] = "curve.csv"
    TABLE4: ClassVar[str] = "table4"  # .csv and .md
    FIGURE5: ClassVar[str] = "figure5"  # .png and .pdf
    BITS_BY_T: ClassVar[str] = "bits_by_t"  # .png and .pdf: L_t against t and the cumulative share
    COMMAND: ClassVar[str] = "rate-distortion"
    VERSION: ClassVar[tuple[str, ...]] = ("ddpm_bench_version_rate_distortion",)
    SINCE_HASHES: ClassVar[tuple[str, ...]] = ("files",)
    RECORDS: ClassVar[tuple[str, ...]] = (CURVE,)  # what `report` reads besides it

    command: str
    nll_run_id: str
    nll_dir: str
    T: int
    n_images: int
    rate_bpd: float
    distortion_bpd: float
    rmse_at_t1: float | None
    model: dict
    data: str
    seed: int
    draws: int
    clip: bool
    decoder_cdf: str
    files: dict = field(default_factory=dict)  # {name: sha256} of curve.csv, table4.*, figure5.*, bits_by_t.*
    extra: dict = field(default_factory=dict)

    def check(self, path: Path) -> None:
        model_sha256_of(self.model, path)



# -- gap ------------------------------------------------------------------------------------------------------

GAP_VERDICTS = ("below", "undecided", "above")  # the gap's 95% interval against max_gap


def gap_verdict_of(ci95: list, max_gap: float) -> str:
    """The one answer of `gap`, `reproduce` and the report: "above" when the whole 95% interval of the
    test-minus-train gap lies above `max_gap` (the model overfits; exit 1), "below" when it lies at or below
    it, "undecided" when it includes it (more images would narrow it)."""
    low, high = ci95
    if low > max_gap:
        return "above"
    return "below" if high <= max_gap else "undecided"


@dataclass(frozen=True)
class GapResult(OfModel, JsonOutput):
    """The test-minus-train gap of two nll outputs of one model (`gap.json` in a reproduce run, or `gap --out
    FILE`): the gap with its standard error and 95% interval, the `verdict` against `max_gap`
    (`GAP_VERDICTS`; `exceeds` is verdict == "above") and what made the two outputs one distribution
    (`splits`, `data.one_distribution`)."""

    FILE: ClassVar[str] = "gap.json"
    SINCE_HASHES: ClassVar[tuple[str, ...]] = ("splits", "verdict")  # 0.2 wrote no version, and neither

    gap_bpd: float
    gap_stderr: float
    ci95: list
    train_bpd: float
    test_bpd: float
    n_train: int
    n_test: int
    max_gap: float
    exceeds: bool
    train: str
    test: str
    train_run_id: str
    test_run_id: str
    model: dict
    verdict: str | None = None  # None only while a file of 0.3 or earlier is read (then filled from ci95)
    splits: str | None = None  # None: two data sets (no overfitting verdict), or a file of 0.2
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: dict, path: Path | str = "<memory>") -> GapResult:
        out = super().from_dict(obj, path)
        if out.verdict is None:  # written before the verdict was a field: it follows from the numbers
            out = replace(out, verdict=gap_verdict_of(out.ci95, out.max_gap))
        if "splits" not in obj:  # a file of 0.2: judged again (without --same-distribution)
            out = replace(out, splits=one_distribution(out.train, out.test))
        return out

    def check(self, path: Path) -> None:
        model_sha256_of(self.model, path)
        if len(self.ci95) != 2 or not all(type_ok(v, float) for v in self.ci95):
            raise OutputFileError(f"{path}: field 'ci95' must be [low, high]")
        if self.verdict is not None and self.verdict != gap_verdict_of(self.ci95, self.max_gap):
            raise OutputFileError(f"{path}: field 'verdict' is {self.verdict!r}, but ci95 and max_gap say "
                                  f"{gap_verdict_of(self.ci95, self.max_gap)!r}")
        if self.exceeds != (gap_verdict_of(self.ci95, self.max_gap) == "above"):
            raise OutputFileError(f"{path}: field 'exceeds' does not follow from ci95 and max_gap")

    def write(self, target: str | Path, file: bool | None = None) -> Path:
        """gap.json in the folder `target`, or the file `target` itself: when `file` says so (`gap --out FILE`
        writes the path it was given), else when it names a .json file or an existing file."""
        target = Path(target)
        if file is None:
            file = target.suffix == ".json" or target.is_file()
        path = target if file else target / self.FILE
        atomic_write_json(path, self.to_dict())
        return path

    def __repr__(self) -> str:
        lo, hi = self.ci95
        return (f"<GapResult {self.verdict}: test-minus-train gap {self.gap_bpd:+.4f} bits/dim, 95% interval "
                f"[{lo:+.4f}, {hi:+.4f}] against max_gap {self.max_gap:g} ({self.n_test:,} images of {self.test}, "
                f"{self.n_train:,} of {self.train})>")

    @property
    def overfits(self) -> bool:
        """The verdict `gap` and `reproduce` exit 1 on: above max_gap, for two outputs of one distribution."""
        return self.verdict == "above" and self.splits is not None


# -- reproduce ------------------------------------------------------------------------------------------------

class Under:
    """A file or folder under a layout's `root`: `samples = Under("samples")` makes `layout.samples` the
    path `layout.root / "samples"`."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, layout, owner=None) -> Path:
        return layout.root / self.name


@dataclass(frozen=True)
class TrainLayout:
    """Where `train` writes inside RUN_DIR (besides run.json and .lock of the run lifecycle)."""

    root: Path
    CONFIG: ClassVar[str] = "config.json"  # the resolved configuration
    config = Under(CONFIG)
    checkpoints = Under("checkpoints")  # ckpt_XXXXXXX.pt
    log = Under("log.csv")

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"ckpt_{step:07d}.pt"

    def list_checkpoints(self) -> list[Path]:
        """Checkpoints of the run, oldest first."""
        return sorted(self.checkpoints.glob("ckpt_*.pt"))


@dataclass(frozen=True)
class ReproduceLayout(TrainLayout):
    """Where each stage of `reproduce` writes inside RUN_DIR (training, when it trains, as `TrainLayout`);
    `gap_nll_train`/`gap_nll_test` hold the importance-sampled bounds of `[evaluation.nll] gap_terms`."""

    RECORD: ClassVar[str] = "reproduce.json"
    samples = Under("samples")
    nll_train = Under("nll_train")
    nll_test = Under("nll_test")
    gap_nll_train = Under("gap_nll_train")
    gap_nll_test = Under("gap_nll_test")
    ode_train = Under("ode_train")  # the probability-flow ODE likelihoods of `[evaluation.ode]`
    ode_test = Under("ode_test")
    continuous_train = Under("continuous_train")  # the continuous-time bounds of `[evaluation.continuous]`
    continuous_test = Under("continuous_test")
    gap = Under(GapResult.FILE)
    rate_distortion = Under("rate_distortion")
    fid = Under("fid")
    report = Under("report")
    record = Under(RECORD)


class ReportFiles:
    """The files `report` writes besides its tables (`tableN.csv/.md/.sources.json`)."""

    COMMAND: ClassVar[str] = "report"
    INDEX: ClassVar[str] = "report.md"
    MANIFEST: ClassVar[str] = "report.json"
    FIGURE5: ClassVar[str] = RateDistortionSummary.FIGURE5  # .png and .pdf
    BITS_BY_T: ClassVar[str] = RateDistortionSummary.BITS_BY_T  # .png and .pdf


@dataclass(frozen=True)
class ReproduceRecord(JsonOutput):
    """`reproduce.json`: what a `reproduce` run ran, and each stage's seconds (the latest run's for a stage
    that ran again)."""

    FILE: ClassVar[str] = ReproduceLayout.RECORD
    VERSION: ClassVar[tuple[str, ...]] = ("environment", "versions", "ddpm_bench")

    recipe: str
    overrides: list
    checkpoint: str
    stages: list
    seconds: dict
    extra: dict = field(default_factory=dict)


# -- read back for `report` (additions: model identities in full, a run's config.json) -----------------------

def identity_of(model: Any, path: Path, name: str = "model") -> ModelIdentity:
    """The whole ModelIdentity inside a `model` field, every field checked; OutputFileError naming the file
    and the field otherwise (`model_sha256_of` checks the sha256 alone)."""
    model_sha256_of(model, path, name)
    ident = model["identity"]
    hints = typing.get_type_hints(ModelIdentity)
    for f in fields(ModelIdentity):
        if f.name not in ident:
            raise OutputFileError(f"{path}: field '{name}.identity.{f.name}' is missing")
        try:
            conform(ident[f.name], hints[f.name])
        except Mismatch as e:
            raise OutputFileError(f"{path}: field '{name}.identity.{f.name}' is {e}") from None
    return ModelIdentity.from_dict(ident)


def feature_extractor_of(metrics: FidMetrics) -> tuple[str | None, str | None]:
    """(name, weights sha256) of the feature extractor of a FID (`metrics.extractors.Extractor.describe()`)."""
    fe = metrics.feature_extractor
    name, sha = fe.get("name"), fe.get("sha256")
    return (name if isinstance(name, str) else None, sha if isinstance(sha, str) else None)


@dataclass(frozen=True)
class RunConfigFile(JsonOutput):
    """`config.json` of a `reproduce` (or `train`) run directory: `RunConfig.to_dict()` (ddpm_bench.config),
    read back with the keys that place a run in the paper's tables checked (`KEYS`). It holds no model
    identity (that of each output is in the output); `sha256` is its content identity. `model` and
    `training` are absent for `reproduce --ckpt` of a diffusers directory (a UNet config, no training
    settings): the objective and training data are then unknown (None), never guessed."""

    FILE: ClassVar[str] = ReproduceLayout.CONFIG
    HASHED: ClassVar[bool] = False  # a resolved recipe, written as it is (train reads it back to resume)
    KEYS: ClassVar[dict] = {"diffusion": {"T": int, "mean_type": str, "var_type": str},
                            "training": {"objective": str, "data": str}}

    diffusion: dict
    model: dict | None = None
    training: dict | None = None
    evaluation: dict | None = None
    extra: dict = field(default_factory=dict)

    def check(self, path: Path) -> None:
        for section, keys in self.KEYS.items():
            values = getattr(self, section)
            if values is None:
                continue
            for key, kind in keys.items():
                if key not in values:
                    raise OutputFileError(f"{path}: field '{section}.{key}' is missing")
                try:
                    conform(values[key], kind)
                except Mismatch as e:
                    raise OutputFileError(f"{path}: field '{section}.{key}' is {e}") from None

    @property
    def sha256(self) -> str:
        return sha256_json(self.to_dict())

    @property
    def T(self) -> int:
        return self.diffusion["T"]

    @property
    def mean_type(self) -> str:
        return self.diffusion["mean_type"]

    @property
    def var_type(self) -> str:
        return self.diffusion["var_type"]

    @property
    def objective(self) -> str | None:
        return self.training["objective"] if self.training else None

    @property
    def data(self) -> str | None:
        """The training data source (None when unknown)."""
        return self.training["data"] if self.training else None
