"""`ddpm-bench gap`: the test-minus-train bits/dim gap (overfitting check, paper section 4.2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ddpm_bench.errors import UserError
from ddpm_bench.shards import read_json

Z95 = 1.959963984540054
MUST_AGREE = ("T", "draws", "clip", "decoder_cdf", "mean_type", "var_type", "precision", "dims")


def load_nll_dir(path: str | Path) -> tuple[dict, np.ndarray]:
    """summary.json and the per-image totals (N,) of an nll output directory."""
    path = Path(path)
    summary_file, per_image = path / "summary.json", path / "per_image.npz"
    if not summary_file.is_file() or not per_image.is_file():
        raise UserError(f"{path}: not a finished nll output (summary.json and per_image.npz are required)")
    summary = read_json(summary_file)
    with np.load(per_image) as f:
        totals = f["terms"].sum(1)
    return summary, totals


def gap_statistics(train: np.ndarray, test: np.ndarray) -> dict:
    """Difference of means with a normal-approximation 95% interval (independent samples, Welch SE)."""
    gap = float(test.mean() - train.mean())
    var = (np.var(train, ddof=1) / len(train) if len(train) > 1 else 0.0) + \
          (np.var(test, ddof=1) / len(test) if len(test) > 1 else 0.0)
    se = math.sqrt(var)
    return {"gap_bpd": gap, "gap_stderr": se, "ci95": [gap - Z95 * se, gap + Z95 * se],
            "train_bpd": float(train.mean()), "test_bpd": float(test.mean()),
            "n_train": int(len(train)), "n_test": int(len(test))}


def compute_gap(train_dir: str | Path, test_dir: str | Path, max_gap: float = 0.03) -> dict:
    """The gap between two nll outputs of the same model and settings; `exceeds` when the whole 95%
    interval lies above `max_gap`."""
    (s_train, train), (s_test, test) = load_nll_dir(train_dir), load_nll_dir(test_dir)
    for key in MUST_AGREE:
        if s_train.get(key) != s_test.get(key):
            raise UserError(f"{train_dir} and {test_dir} differ in {key} ({s_train.get(key)!r} vs {s_test.get(key)!r})")
    if s_train["model"].get("sha256") != s_test["model"].get("sha256") or \
            s_train["model"].get("callable") != s_test["model"].get("callable"):
        raise UserError(f"{train_dir} and {test_dir} were computed with different models")
    result = gap_statistics(train, test)
    result.update({"max_gap": max_gap, "train": s_train["data"], "test": s_test["data"],
                   "exceeds": bool(result["ci95"][0] > max_gap), "model": s_test["model"]})
    return result


def run_gap(train_dir: str, test_dir: str, max_gap: float = 0.03) -> int:
    result = compute_gap(train_dir, test_dir, max_gap)
    print(json.dumps(result, indent=2))
    return 1 if result["exceeds"] else 0
