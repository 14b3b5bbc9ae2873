"""What a gap.json says, in words: does the model overfit beyond the recipe's `max_gap`?

`gap` (and `reproduce`) call a model overfitting when the whole 95% interval of its test-minus-train gap
lies above `max_gap` (gap.json's `exceeds`). The sentence is only about overfitting when the two outputs
are of one distribution (`data.one_distribution`, as gap.json's `splits` records it); between two data sets
the gap says nothing about it.
"""

from __future__ import annotations

from ddpm_bench.data import one_distribution
from ddpm_bench.outputs import GapResult
from ddpm_bench.reporting.inputs import dataset_name


def _bpd(v: float) -> str:
    """Two decimals; two significant digits below 0.1 (a gap of 0.004 is not "0.00")."""
    return f"{v:.2f}" if abs(v) >= 0.1 or v == 0 else f"{v:.2g}"


def splits_of(gap: GapResult) -> str | None:
    """What made the gap's two outputs one distribution as `gap` judged it (gap.json's `splits`; judged
    again, without `--same-distribution`, for a gap.json of 0.2, which lacks it); None: two data sets."""
    return gap.extra.get("splits") or one_distribution(gap.train, gap.test)


def overfits(gap: GapResult) -> bool:
    """The verdict `gap` exits 1 on: the whole 95% interval above max_gap, on one distribution."""
    return gap.exceeds and splits_of(gap) is not None


def gap_verdict(gap: GapResult) -> str:
    """One sentence: overfits, does not, or cannot tell, with the gap, its 95% interval and max_gap; or
    that the gap compares two data sets and says nothing about overfitting."""
    lo, hi = gap.ci95
    what = (f"the test-minus-train gap {_bpd(gap.gap_bpd)} bits/dim (95% interval {_bpd(lo)}..{_bpd(hi)}, "
            f"{gap.n_test:,} test and {gap.n_train:,} train images)")
    if splits_of(gap) is None:
        return (f"no overfitting verdict: {what} compares two data sets ({dataset_name(gap.train)} for "
                f"train, {dataset_name(gap.test)} for test), not a training set with its own test split")
    if overfits(gap):
        return f"overfits: {what} lies above max_gap {gap.max_gap:g}"
    if hi <= gap.max_gap:
        return f"no overfitting beyond max_gap {gap.max_gap:g}: {what} lies below it"
    return f"undecided: {what} includes max_gap {gap.max_gap:g}; more images would narrow the interval"
