"""The embedded default data set: 32x32 RGB patches of public-domain / CC0 photographs.

It ships inside the package (`ddpm_bench/data/embedded/patches32.npz`, arrays `train` and `test`), so
the quick start and the tests work offline. `embedded/README.md` names the source photographs and their
licences, the method, and the command that regenerates the file (`scripts/make_embedded_dataset.py`).
Train and test patches come from disjoint regions of each photograph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddpm_bench.data.images import validate_images
from ddpm_bench.errors import DataError

EMBEDDED_FILE = Path(__file__).parent / "embedded" / "patches32.npz"
EMBEDDED_SHA256 = "871bb619856b83401b1a4ab9d5d652201575a5b71abe8b1b61c832d2f42cb5c3"
SPLITS = ("train", "test")


def load_embedded(split: str, path: Path = EMBEDDED_FILE, sha256: str = EMBEDDED_SHA256) -> np.ndarray:
    """The `split` ("train" or "test") of the embedded data set as uint8 (N, 32, 32, 3), after checking
    the file's sha256."""
    from ddpm_bench.provenance import sha256_file

    if split not in SPLITS:
        raise DataError(f"embedded:{split}: unknown split; use embedded:train or embedded:test")
    if not path.is_file():
        raise DataError(f"{path}: the embedded data set is missing from this installation; reinstall ddpm-bench")
    got = sha256_file(path)
    if got != sha256:
        raise DataError(f"{path}: checksum mismatch: sha256 {got}, expected {sha256}; the embedded data set is "
                        "damaged or was regenerated with other library versions; reinstall ddpm-bench")
    with np.load(path, allow_pickle=False) as f:
        images = f[split]
    return validate_images(images, f"embedded:{split}")
