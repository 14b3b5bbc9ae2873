"""ddpm-bench: the exact variational bound, rate-distortion and sample quality of DDPM models."""

__version__ = "0.1.0"
