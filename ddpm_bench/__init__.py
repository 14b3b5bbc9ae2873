"""ddpm-bench: the exact variational bound, rate-distortion and sample quality of DDPM models.

The library (docs/api.md): `load_model`, `bound`, `sample`, `fid`, `fid_from_features`, `rate_distortion`,
`gap`, `read_output`, with the typed options and outputs they take and give. The `ddpm-bench` command line
is a thin shell over them.
"""

from ddpm_bench.api import (
    BoundOptions,
    DiffusionConfig,
    Execution,
    FidOptions,
    ImportanceOptions,
    Network,
    NllOutput,
    SampleResult,
    SamplerOptions,
    bound,
    fid,
    fid_from_features,
    gap,
    load_model,
    rate_distortion,
    read_output,
    sample,
)
from ddpm_bench.version import __version__

__all__ = ["BoundOptions", "DiffusionConfig", "Execution", "FidOptions", "ImportanceOptions", "Network", "NllOutput",
           "SampleResult", "SamplerOptions", "__version__", "bound", "fid", "fid_from_features", "gap", "load_model",
           "rate_distortion", "read_output", "sample"]
