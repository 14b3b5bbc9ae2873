"""The interface every likelihood estimator implements, and what they share.

An estimator turns a `Network` and images into per-image parts (named arrays, one row per image) and a
typed summary. It declares:
- `NAME` (how `nll --estimator` and outputs name it), `QUANTITY` ("bound": an upper bound on -log p in
  bits/dim; "likelihood": -log p itself; two quantities are never compared or shown as one another),
  `COLUMN` (which of Table 1's column sets shows it: estimators of one estimand share one, e.g. the exact
  and importance-sampled bounds "bound"; another estimand gets its own),
  `OPTIONS` (its frozen options dataclass: every field is a setting of its runs, `nll` flag and recipe
  key), `SELECT` (the option whose value on the command line chooses it, e.g. `terms` for `--terms K`)
  or `FLAG` (a flag that chooses it, e.g. `--ode`), `SHARD_KEYS` (the per-image arrays of a shard),
  `RATE_DISTORTION` (whether it gives every term), `PROGRESS_UNIT` (what its progress counts);
- `prepare` (before the run is claimed: what of its inputs belongs to the run's identity, e.g. where a
  proposal comes from) and `setup` (after: state every process needs, e.g. the proposal, kept in the run
  directory so a resume does not compute it again);
- `compute` (one shard's images -> its arrays); its cost: `evaluations_per_image`, `setup_evaluations`,
  `network_evals` (what it made), `cost` and `alternative` (for `--dry-run`), `probe_cost` (a dry run's
  timing of the estimate itself, when the engine's per-evaluation probe cannot tell);
- `finish` (the merged arrays -> the typed `NllOutput`: per-image parts and summary) and `comparable`
  (what two outputs must share for `gap` to compare them).
The run lifecycle, shards, resume, torchrun and identity are `ddpm_bench.jobs.nll`'s, the same for all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import torch

from ddpm_bench.data import ImageSet
from ddpm_bench.errors import UserError
from ddpm_bench.network import Network
from ddpm_bench.outputs import (
    NllOutput,
    NllSummary,
    OutputFileError,
    check_summary_means,
    read_json_object,
    verify_files,
)

Progress = Callable[[int], None]


def check_between_steps(network: Network, what: str, who: str) -> None:
    """A discrete model called between its steps (the ODE, the continuous bound): it must define an eps there
    (a mean type other than mu) and take a fractional network index; `what` names the estimate as the caller
    chose it, `who` in words. UserError otherwise."""
    if network.diffusion.mean_type == "mu":
        raise UserError(f"{what}: mean type 'mu' predicts the mean of one discrete step; it defines no eps at the "
                        f"continuous noise levels {who} visits")
    if not network.model.fractional_steps:
        raise UserError(f"{what}: the model {network.identity.origin} takes only integer network indices; {who} "
                        "calls it at fractional ones (a plug-in says it can with an attribute fractional_steps = "
                        "True on what its factory returns)")


class Estimator:
    """Base class: an estimator with its options (see the module docstring)."""

    NAME: ClassVar[str]
    QUANTITY: ClassVar[str] = "bound"
    COLUMN: ClassVar[str] = "bound"  # Table 1's columns of its outputs: one per estimand, never shared by two
    OPTIONS: ClassVar[type]
    SELECT: ClassVar[str | None] = None
    FLAG: ClassVar[tuple[str, str] | None] = None  # (flag, help): a store-true flag that chooses it, e.g. --ode
    SHARD_KEYS: ClassVar[tuple[str, ...]]
    RATE_DISTORTION: ClassVar[bool] = False
    PROGRESS_UNIT: ClassVar[str] = "eval"  # what `compute` reports to its progress callback
    SUMMARY: ClassVar[type[NllSummary]]  # its summary.json
    PER_IMAGE: ClassVar[type]  # its per_image.npz: read(folder, summary), write(folder), index, totals, means()

    def __init__(self, options: Any):
        if not isinstance(options, self.OPTIONS):
            raise TypeError(f"{self.NAME} takes {self.OPTIONS.__name__}, not {type(options).__name__}")
        self.options = options

    # -- before and after the run is claimed -----------------------------------------------------------------

    def check(self, network: Network, images: ImageSet) -> None:
        """Refuse settings that cannot work with this model or data (UserError)."""

    def prepare(self, network: Network, images: ImageSet) -> dict:
        """What, besides the options, belongs to the run's identity (JSON-able)."""
        return {}

    def setup(self, network: Network, images: ImageSet, run, batch_size: int) -> None:
        """State every process needs before the shards (`run`: the claimed RunDir, None in memory)."""

    def identity(self) -> dict:
        """The options as they enter the run's identity."""
        return asdict(self.options)

    # -- the work ---------------------------------------------------------------------------------------------

    def evaluations_per_image(self, T: int) -> int:
        raise NotImplementedError

    def cost(self, n_images: int, T: int) -> tuple[int, str]:
        """(network evaluations, what they are) of an estimate on `n_images` images, for `--dry-run`."""
        per_image = self.evaluations_per_image(T)
        return n_images * per_image, f"{per_image} evaluations"

    def label(self) -> str:
        """How a dry run names this estimator with its options."""
        return f"the {self.NAME} estimator"

    @classmethod
    def alternative(cls, T: int) -> Estimator | None:
        """The instance whose cost a dry run of another estimator of the same quantity shows beside its own
        (None: none)."""
        return None

    @classmethod
    def summary_lines(cls, summary: NllSummary) -> list[str]:
        """What `nll` prints of a finished output."""
        se = summary.total_bpd_stderr
        return [f"  total {summary.quantity:6s}  {summary.total_bpd:.5f} bits/dim" + (f" +- {se:.5f}" if se else "")]

    def probe_cost(self, network: Network, images: ImageSet, batch_size: int) -> float | None:
        """For a dry run: seconds per image from a short probe of the estimate itself, when the engine's
        per-evaluation probe cannot tell (None: it can; `cost` then gives the evaluations)."""
        return None

    def network_evals(self, merged: dict[str, np.ndarray], T: int) -> int:
        """Every network evaluation the estimate made, its setup's included."""
        n = len(next(iter(merged.values())))
        return n * self.evaluations_per_image(T) + self.setup_evaluations()

    def setup_evaluations(self) -> int:
        """Network evaluations of `setup` (a pilot), counted in `network_evals`."""
        return 0

    def setup_seconds(self) -> float:
        return 0.0

    def compute(self, network: Network, images: torch.Tensor, index: torch.Tensor, *, batch_size: int,
                progress: Progress | None) -> dict[str, np.ndarray]:
        """One shard: uint8 images (n, C, H, W) with data-set indices (n,) -> arrays with n rows."""
        raise NotImplementedError

    def finish(self, merged: dict[str, np.ndarray], common: dict) -> NllOutput:
        """The typed output from the merged arrays (`index` and `seconds` among them) and the fields every
        summary has (`common`: run id, data, model, ...)."""
        raise NotImplementedError

    @classmethod
    def read(cls, folder, obj: dict | None = None) -> NllOutput:
        """A finished output of this estimator: its summary (`obj`, when already read) and per-image parts,
        checked to belong together."""
        from pathlib import Path

        folder = Path(folder)
        if not folder.is_dir():
            raise OutputFileError(f"{folder}: not a directory (expected a finished `ddpm-bench nll` output)")
        path = folder / NllSummary.FILE
        obj = read_json_object(path) if obj is None else obj
        if obj.get("estimator", "exact") != cls.NAME:
            raise OutputFileError(f"{path}: is an output of the {obj.get('estimator')!r} estimator, not "
                                  f"{cls.NAME!r} (field 'estimator')")
        summary = cls.SUMMARY.from_dict(obj, path)
        verify_files(folder, summary.files, str(path))
        per_image = cls.PER_IMAGE.read(folder, summary)
        check_summary_means(summary, per_image, folder)
        return NllOutput(folder, summary, per_image)

    @classmethod
    def column(cls, summary: NllSummary) -> str:
        """Which of Table 1's column sets shows this output (`COLUMN`, unless its settings make it another
        estimand)."""
        return cls.COLUMN

    @classmethod
    def comparable(cls, summary: NllSummary) -> dict:
        """What two outputs must share to be compared (`gap`): the quantity and the settings that change
        its expectation (not the seed or how many draws estimate it)."""
        return {"quantity": summary.quantity, "precision": summary.precision, "dims": summary.dims}
