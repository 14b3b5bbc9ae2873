"""The version of ddpm-bench, a leaf every module may import (the package's `__init__` is the public API)."""

__version__ = "0.4.0"
