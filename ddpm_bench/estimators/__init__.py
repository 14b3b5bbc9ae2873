"""The table of likelihood estimators: `nll` chooses one by name (`--estimator`, or the option that
selects it, such as `--terms K`), and every reader of an nll output finds its typed parts here. A new
estimator is one module (an `Estimator`, ddpm_bench/estimators/base.py) and one row of `ESTIMATORS`.

| name | what it gives | module |
|---|---|---|
| exact | the variational bound, every term of every image | exact.py |
| importance | the same bound's expectation from K drawn terms per image | importance.py |
| ode | the probability-flow ODE likelihood (a likelihood, not a bound) | ode.py |
| continuous | the continuous-time bound (VDM) of any model: prior, reconstruction, diffusion | continuous.py |
"""

from __future__ import annotations

from pathlib import Path

from ddpm_bench.estimators.base import Estimator
from ddpm_bench.estimators.continuous import Continuous
from ddpm_bench.estimators.exact import Exact
from ddpm_bench.estimators.importance import Importance
from ddpm_bench.estimators.ode import Ode
from ddpm_bench.outputs import NllOutput, NllSummary, OutputFileError, read_json_object

ESTIMATORS: dict[str, type[Estimator]] = {}


def register(cls: type[Estimator]) -> type[Estimator]:
    """Add a row to the table; a duplicate name or a class that is not an Estimator is refused."""
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise TypeError(f"{cls!r} is not an Estimator")
    if cls.NAME in ESTIMATORS:
        raise ValueError(f"estimator {cls.NAME!r} is already registered")
    ESTIMATORS[cls.NAME] = cls
    return cls


for _row in (Exact, Importance, Ode, Continuous):
    register(_row)


def make_estimator(options) -> Estimator:
    """The estimator whose options dataclass `options` is."""
    for cls in ESTIMATORS.values():
        if type(options) is cls.OPTIONS:
            return cls(options)
    raise TypeError(f"no estimator takes {type(options).__name__}")


def read_output(folder: str | Path) -> NllOutput:
    """A finished nll output of any estimator, typed and checked (OutputFileError naming file and field)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OutputFileError(f"{folder}: not a directory (expected a finished `ddpm-bench nll` output)")
    obj = read_json_object(folder / NllSummary.FILE)
    return _estimator_of(folder / NllSummary.FILE, obj).read(folder, obj)


def column_of(summary: NllSummary) -> str:
    """Which of Table 1's column sets shows an nll output: its estimator's (`Estimator.column`); by its
    quantity when the estimator is one this version does not know, or its summary says another quantity than
    the estimator's (a likelihood is never shown as a bound)."""
    cls = ESTIMATORS.get(summary.estimator)
    return cls.column(summary) if cls is not None and summary.quantity == cls.QUANTITY else summary.quantity


def read_summary(folder: str | Path) -> NllSummary:
    """summary.json of a finished nll output, typed by its estimator, checked as `read_output` checks it:
    against the files it records and the per-image parts it summarises (its numbers are shown alone)."""
    return read_output(folder).summary


def _estimator_of(path: Path, obj: dict) -> type[Estimator]:
    name = obj.get("estimator", Exact.NAME)
    if name not in ESTIMATORS:
        raise OutputFileError(f"{path}: field 'estimator' is {name!r}, which this version does not know "
                              f"({', '.join(ESTIMATORS)})")
    return ESTIMATORS[name]
