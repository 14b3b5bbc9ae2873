"""The defaults that more than one surface shows: the Python API's keywords, the command-line flags, the
recipes' keys and the docs read them here, so that one default is never written in several places."""

from __future__ import annotations

# the test-minus-train gap (bits/dim) beyond which a model overfits: `gap --max-gap`, `ddpm_bench.gap(max_gap=)`,
# a recipe's `evaluation.max_gap` (a recipe may set its own, as recipes/embedded.toml does, and says why)
MAX_GAP = 0.03
SEED = 0  # every seed: the noise of the bound, the ODE probes, the samplers
FID_REF = "cifar10:train"  # the paper's FID reference: the CIFAR-10 training set
FID_BACKEND = "torch-fidelity"
FEATURE_EXTRACTOR = "inception-v3-compat"  # the standard Inception of FID/IS (torch-fidelity's name)
DEVICE = "auto"  # the first CUDA device when there is one, else the CPU
PRECISION = "fp32"
