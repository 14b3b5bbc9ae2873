"""The paper's numbers (Ho et al. 2020, Tables 1-4 and §4.3), shipped as ddpm_bench/paper/ddpm_paper_values.json."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

PAPER_VALUES_FILE = "paper/ddpm_paper_values.json"  # inside the ddpm_bench package
PAPER_VALUES_NAME = f"ddpm_bench/{PAPER_VALUES_FILE}"  # as reports name it
PAPER_T = 1000  # the paper's Table 4 is for T = 1000 steps


def paper_values() -> dict:
    """The whole JSON file (read on every call; it is small)."""
    return json.loads(resources.files("ddpm_bench").joinpath(PAPER_VALUES_FILE).read_text())


def paper_table_rows(key: str, values: dict | None = None) -> list[dict]:
    """Rows of one table of the JSON (e.g. "table1_cifar10") as dicts keyed by its "columns"."""
    table = (values or paper_values())[key]
    return [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]


def paper_table4(values: dict | None = None) -> dict[int, tuple[float, float]]:
    """Table 4: reverse time s -> (rate bits/dim, RMSE on 0..255), for T = 1000."""
    return {int(r["reverse_time"]): (float(r["rate_bpd"]), float(r["rmse"]))
            for r in paper_table_rows("table4_rate_distortion", values)}


def paper_table4_columns(reverse_times: np.ndarray, T: int, values: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The paper's rate and RMSE at `reverse_times` when T = 1000, NaN otherwise (and where the paper has no row)."""
    rate = np.full(len(reverse_times), np.nan)
    err = np.full(len(reverse_times), np.nan)
    if T == PAPER_T:
        table = paper_table4(values)
        for j, s in enumerate(reverse_times):
            if int(s) in table:
                rate[j], err[j] = table[int(s)]
    return rate, err
