"""The evaluation protocol of the paper (section 4, Table 1) and the checks that keep numbers honest.

Paper: IS 9.46 +/- 0.11 and FID 3.17 for 50,000 samples of the EMA model against the CIFAR-10 training
set, IS as mean +/- std over 10 splits (the protocol of Salimans et al. 2016 and Heusel et al. 2017).
"""

from __future__ import annotations

from ddpm_bench.errors import UserError
from ddpm_bench.reporting.paper import paper_table_rows

PAPER_NUM_SAMPLES = 50_000
PAPER_REF = "cifar10:train"
IS_SPLITS = 10
NOT_COMPARABLE = "not comparable to the paper"


def paper_values() -> dict:
    """The paper's unconditional DDPM row of Table 1 (IS, IS std, FID) and its protocol."""
    rec = next(r for r in paper_table_rows("table1_cifar10")
               if str(r["model"]).startswith("Ours") and "L_simple" in str(r["model"]))
    return {"is_mean": rec["IS"], "is_std": rec["IS_std"], "fid": rec["FID"], "num_samples": PAPER_NUM_SAMPLES,
            "ref": PAPER_REF, "weights": "ema", "is_splits": IS_SPLITS, "row": rec["model"]}


def check_counts(n_samples: int, n_ref: int, feature_dim: int, allow_few_samples: bool = False) -> list[str]:
    """Refuse fewer samples than feature dimensions (singular covariance) unless explicitly allowed (then
    a warning says so); warn below the paper's 50,000 and for a reference smaller than the feature
    dimension (e.g. the 2,000-image embedded set)."""
    warnings = []
    if n_samples < feature_dim:
        if not allow_few_samples:
            raise UserError(f"--samples: {n_samples} images is fewer than the {feature_dim} feature dimensions; the "
                            f"covariance would be singular and FID meaningless (the paper uses "
                            f"{PAPER_NUM_SAMPLES:,}); --allow-few-samples computes it anyway, marked as such")
        warnings.append(f"{n_samples:,} samples, fewer than the {feature_dim} feature dimensions (--allow-few-samples): "
                        f"the sample covariance is singular and the FID strongly biased; {NOT_COMPARABLE}")
    if n_samples < PAPER_NUM_SAMPLES:
        warnings.append(f"fewer than {PAPER_NUM_SAMPLES:,} samples ({n_samples:,}): {NOT_COMPARABLE} "
                        "(FID is biased upwards for small sample counts)")
    if n_ref < feature_dim:
        warnings.append(f"reference has {n_ref:,} images, fewer than the {feature_dim} feature dimensions: its "
                        f"covariance is singular; {NOT_COMPARABLE}")
    return warnings
