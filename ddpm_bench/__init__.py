"""ddpm-bench: the exact variational bound, rate-distortion and sample quality of DDPM models.

The library (docs/api.md): `load_model`, `bound`, `sample`, `fid`, `fid_from_features`, `rate_distortion`,
`gap`, `report`, `train`, `reproduce`, `inspect`, `read_output`, with the typed options they take and the
typed results they give. The `ddpm-bench` command line is a thin shell over them. The tables of
estimators (`ddpm_bench.estimators`: `register`, `ESTIMATORS`) and of model formats
(`ddpm_bench.formats`: `register`, `FORMATS`) are open for additions.
"""

from ddpm_bench import estimators
from ddpm_bench.api import (
    BoundOptions,
    ContinuousOptions,
    DiffusionConfig,
    DryRun,
    EstimatorOptions,
    Execution,
    FidMetrics,
    FidOptions,
    GapResult,
    ImportanceOptions,
    Network,
    NllOutput,
    OdeOptions,
    RateDistortionCurve,
    ReportResult,
    ReproduceResult,
    SampleResult,
    SamplerOptions,
    TrainResult,
    bound,
    estimator_options,
    fid,
    fid_from_features,
    gap,
    inspect,
    load_model,
    rate_distortion,
    read_output,
    report,
    reproduce,
    sample,
    train,
)
from ddpm_bench.errors import OutOfMemory, UserError
from ddpm_bench.messages import DdpmBenchWarning
from ddpm_bench.models import formats
from ddpm_bench.version import __version__

__all__ = ["BoundOptions", "ContinuousOptions", "DdpmBenchWarning", "DiffusionConfig", "DryRun", "EstimatorOptions", "Execution",
           "FidMetrics", "FidOptions", "GapResult", "ImportanceOptions", "Network", "NllOutput", "OdeOptions", "OutOfMemory",
           "RateDistortionCurve", "ReportResult", "ReproduceResult", "SampleResult", "SamplerOptions", "TrainResult",
           "UserError", "__version__", "bound", "estimator_options", "estimators", "fid", "fid_from_features",
           "formats", "gap", "inspect", "load_model", "rate_distortion", "read_output", "report", "reproduce",
           "sample", "train"]
