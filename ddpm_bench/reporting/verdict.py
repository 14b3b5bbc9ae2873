"""What a gap result says, in words: does the model overfit beyond `max_gap`?

The answer is gap.json's `verdict` (`outputs.gap_verdict_of`: "above", "below" or "undecided"), the same one
that `gap` and `reproduce` exit on and that `ddpm_bench.gap` returns. The sentence is only about overfitting
when the two outputs are of one distribution (gap.json's `splits`, `data.one_distribution`); between two
data sets the gap says nothing about it.
"""

from __future__ import annotations

from ddpm_bench.outputs import GapResult
from ddpm_bench.reporting.inputs import dataset_name


def _bpd(v: float) -> str:
    """Two decimals; two significant digits below 0.1 (a gap of 0.004 is not "0.00")."""
    return f"{v:.2f}" if abs(v) >= 0.1 or v == 0 else f"{v:.2g}"


def gap_verdict(gap: GapResult) -> str:
    """One sentence: overfits (above), does not (below), or undecided, with the gap, its 95% interval and
    max_gap; or that the gap compares two data sets and says nothing about overfitting."""
    lo, hi = gap.ci95
    what = (f"the test-minus-train gap {_bpd(gap.gap_bpd)} bits/dim (95% interval {_bpd(lo)}..{_bpd(hi)}, "
            f"{gap.n_test:,} test and {gap.n_train:,} train images)")
    if gap.splits is None:
        return (f"no overfitting verdict: {what} compares two data sets ({dataset_name(gap.train)} for "
                f"train, {dataset_name(gap.test)} for test), not a training set with its own test split")
    if gap.verdict == "above":
        return f"overfits: {what} lies above max_gap {gap.max_gap:g}"
    if gap.verdict == "below":
        return f"no overfitting beyond max_gap {gap.max_gap:g}: {what} lies below it"
    return f"undecided: {what} includes max_gap {gap.max_gap:g}; more images would narrow the interval"
