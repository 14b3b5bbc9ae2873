"""The fault trial (tests/fault_trial.py) in the slow suite: every case holds."""

import pytest

from tests.fault_trial import run_trial


@pytest.mark.slow
def test_every_fault_case_ends_identical_or_in_one_line(tmp_path):
    results = run_trial(tmp_path, cases=2, seed=0)
    failed = [r for r in results if r[2] != "ok"]
    assert len(results) >= 20 and not failed, failed
