"""`ddpm-bench gap`: the test-minus-train bits/dim gap (overfitting check, paper section 4.2)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ddpm_bench.arguments import given, switch
from ddpm_bench.data import one_distribution, source_split
from ddpm_bench.defaults import MAX_GAP
from ddpm_bench.errors import UserError
from ddpm_bench.estimators import ESTIMATORS, read_output
from ddpm_bench.outputs import GapResult, NllOutput, gap_verdict_of
from ddpm_bench.run_dir import describe_differences

Z95 = 1.959963984540054


def gap_statistics(train: np.ndarray, test: np.ndarray) -> dict:
    """Difference of means with a normal-approximation 95% interval (independent samples, Welch SE)."""
    gap = float(test.mean() - train.mean())
    var = (np.var(train, ddof=1) / len(train) if len(train) > 1 else 0.0) + \
          (np.var(test, ddof=1) / len(test) if len(test) > 1 else 0.0)
    se = math.sqrt(var)
    return {"gap_bpd": gap, "gap_stderr": se, "ci95": [gap - Z95 * se, gap + Z95 * se],
            "train_bpd": float(train.mean()), "test_bpd": float(test.mean()),
            "n_train": int(len(train)), "n_test": int(len(test))}


def check_comparable(train: NllOutput, test: NllOutput, same_distribution: bool = False) -> str:
    """Two nll outputs of one model identity (weights, ema or raw, diffusion) with the same bound options,
    on two different image sets, a train split first and a test split second, of one data set (or of two
    that the user declares one distribution); UserError (exit 2) naming what differs otherwise. Returns what
    makes them one distribution, for the verdict."""
    a, b = train.summary, test.summary
    where = f"{train.path or 'the train result'} and {test.path or 'the test result'}"
    for output, want in ((train, "train"), (test, "test")):
        split = source_split(output.summary.data)
        if split is not None and split != want:
            raise UserError(f"{given(want, output.path or output)} holds the bound of {output.summary.data}, a {split} "
                            "split; give the train split's output first and the test split's second")
    relation = one_distribution(a.data, b.data, same_distribution)
    if relation is None:
        raise UserError(f"{where} are bounds on two data sets ({a.data}, {b.data}): their difference is no "
                        f"train/test gap; give {switch('same_distribution')} if they are one distribution")
    if a.run_id == b.run_id:
        raise UserError(f"{where} are the same nll run (run_id {a.run_id[:12]}); give a train and a test output")
    if a.data_sha256 == b.data_sha256:
        raise UserError(f"{where} were computed on the same images (data sha256 {a.data_sha256[:12]}); "
                        "give a train and a test output")
    if a.model_sha256 != b.model_sha256:
        ia, ib = a.model["identity"], b.model["identity"]
        raise UserError(f"{where} were computed with different models ("
                        f"{describe_differences(_model_fields(ia), _model_fields(ib))}); a gap compares one model")
    if a.quantity != b.quantity:
        raise UserError(f"{where} are two quantities (quantity: {a.quantity!r} -> {b.quantity!r}: a likelihood and "
                        "a bound); a gap compares one quantity")
    ea, eb = ESTIMATORS[a.estimator].comparable(a), ESTIMATORS[b.estimator].comparable(b)
    if ea != eb:  # the seed, draws and term sampling (exact or --terms K) change only the noise of an estimate
        raise UserError(f"{where} differ in what they estimate ({describe_differences(ea, eb)}); a gap compares "
                        "one quantity with the same settings")
    return relation


def _model_fields(identity: dict) -> dict:
    return {k: identity.get(k) for k in ("weights", "weights_sha256", "diffusion", "kind", "sha256")}


def compute_gap(train_dir: str | Path, test_dir: str | Path, max_gap: float = MAX_GAP,
                same_distribution: bool = False) -> GapResult:
    """The gap between two nll outputs of the same model and settings, with its verdict against `max_gap`."""
    return gap_of(read_output(train_dir), read_output(test_dir), max_gap, same_distribution)


def gap_of(train: NllOutput, test: NllOutput, max_gap: float = MAX_GAP,
           same_distribution: bool = False) -> GapResult:
    """The gap between two nll results (read from files or computed in memory)."""
    check_max_gap(max_gap)
    relation = check_comparable(train, test, same_distribution)
    stats = gap_statistics(train.per_image.totals, test.per_image.totals)
    verdict = gap_verdict_of(stats["ci95"], max_gap)
    return GapResult(**stats, max_gap=float(max_gap), exceeds=verdict == "above", verdict=verdict, splits=relation,
                     train=train.summary.data, test=test.summary.data, train_run_id=train.summary.run_id,
                     test_run_id=test.summary.run_id, model=test.summary.model)


def check_max_gap(max_gap: float) -> None:
    if isinstance(max_gap, bool) or not isinstance(max_gap, (int, float)) or not math.isfinite(max_gap):
        raise UserError(f"{given('max_gap', max_gap)}: must be a finite number of bits/dim (the check could never fire)")
