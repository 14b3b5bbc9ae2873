"""The evaluation protocol of the paper (section 4, Table 1) and the checks that keep numbers honest.

Paper: IS 9.46 +/- 0.11 and FID 3.17 for 50,000 samples of the EMA model against the CIFAR-10 training
set, IS as mean +/- std over 10 splits (the protocol of Salimans et al. 2016 and Heusel et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

from ddpm_bench.arguments import count, flag, given, named, switch
from ddpm_bench.defaults import FEATURE_EXTRACTOR, FID_BACKEND, FID_REF
from ddpm_bench.errors import UserError
from ddpm_bench.reporting.paper import paper_table_rows

PAPER_NUM_SAMPLES = 50_000
PAPER_REF = FID_REF
IS_SPLITS = 10
NOT_COMPARABLE = "not comparable to the paper"
BACKENDS = ("torch-fidelity", "clean-fid", "both")
CLEAN_FID_MODES = ("clean", "legacy_tensorflow")


@dataclass(frozen=True)
class FidOptions:
    """What `fid` measures and against what (the samples and `--out` are the run's own)."""

    ref: str = PAPER_REF  # a data source, or a reference statistics .npz from the cache
    data_root: str | None = None  # folder with cifar-10-batches-py
    num_samples: int | None = None  # the first N samples (None = all)
    num_ref: int | None = None  # the first N reference images (None = all)
    backend: str = FID_BACKEND  # or "clean-fid", "both"
    clean_fid_mode: str = "legacy_tensorflow"  # or "clean"
    feature_extractor: str = FEATURE_EXTRACTOR  # or "packaged", "tiny-test"
    inception_weights: str | None = None  # local file of the standard weights
    cache_dir: str | None = None  # reference statistics cache
    allow_few_samples: bool = False  # FID below the feature dimension, marked as not comparable
    prc: bool = True  # torch-fidelity precision/recall

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"{given('backend', self.backend)}: choose from {', '.join(BACKENDS)}")
        if self.clean_fid_mode not in CLEAN_FID_MODES:
            raise UserError(f"{given('clean_fid_mode', self.clean_fid_mode)}: choose from "
                            f"{', '.join(CLEAN_FID_MODES)}")
        for name in ("num_samples", "num_ref"):
            count(name, getattr(self, name), optional=True)
        for name in ("allow_few_samples", "prc"):
            flag(name, getattr(self, name))

    @property
    def backends(self) -> list[str]:
        return ["torch-fidelity", "clean-fid"] if self.backend == "both" else [self.backend]


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
    for what, n in (("samples", n_samples), ("ref", n_ref)):
        if n < 2:
            raise UserError(f"{n} image in {named(what)}: FID compares the mean and covariance of two image sets, "
                            "which needs at least 2 images on each side (the paper: 50,000)")
    warnings = []
    if n_samples < feature_dim:
        if not allow_few_samples:
            raise UserError(f"{n_samples} images in {named('samples')} are fewer than the {feature_dim} feature "
                            f"dimensions; the covariance would be singular and FID meaningless (the paper uses "
                            f"{PAPER_NUM_SAMPLES:,}); {switch('allow_few_samples')} computes it anyway, marked as such")
        # a warning is stored in metrics.json: the same words whoever called (the flag's own name)
        warnings.append(f"{n_samples:,} samples, fewer than the {feature_dim} feature dimensions (--allow-few-samples): "
                        f"the sample covariance is singular and the FID strongly biased; {NOT_COMPARABLE}")
    if n_samples < PAPER_NUM_SAMPLES:
        warnings.append(f"fewer than {PAPER_NUM_SAMPLES:,} samples ({n_samples:,}): {NOT_COMPARABLE} "
                        "(FID is biased upwards for small sample counts)")
    if n_ref < feature_dim:
        warnings.append(f"reference has {n_ref:,} images, fewer than the {feature_dim} feature dimensions: its "
                        f"covariance is singular; {NOT_COMPARABLE}")
    return warnings
