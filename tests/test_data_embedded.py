"""The embedded default data set ships with the package, loads offline and is checksummed."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ddpm_bench.data import embedded, load_images
from ddpm_bench.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def test_committed_file_matches_the_constant():
    assert hashlib.sha256(embedded.EMBEDDED_FILE.read_bytes()).hexdigest() == embedded.EMBEDDED_SHA256
    assert embedded.EMBEDDED_SHA256 in (ROOT / "ddpm_bench/data/embedded/README.md").read_text()


def test_splits_shapes_and_disjointness():
    train, test = embedded.load_embedded("train"), embedded.load_embedded("test")
    assert train.shape == (2000, 32, 32, 3) and test.shape == (500, 32, 32, 3)
    assert train.dtype == np.uint8 and test.dtype == np.uint8
    assert 40 < train.mean() < 200 and train.std() > 20  # photographs, not a constant or noise-free array
    train_rows = {r.tobytes() for r in train}
    assert not any(r.tobytes() in train_rows for r in test)  # no test patch is a train patch
    s = load_images("embedded:test", num_images=100)
    assert s.source == "embedded:test" and len(s) == 100 and s.shape == (3, 32, 32)


def test_checksum_mismatch_and_unknown_split(tmp_path):
    with pytest.raises(DataError, match="unknown split"):
        embedded.load_embedded("valid")
    damaged = tmp_path / "patches32.npz"
    shutil.copy(embedded.EMBEDDED_FILE, damaged)
    with open(damaged, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(DataError, match="checksum mismatch"):
        embedded.load_embedded("train", path=damaged)
    with pytest.raises(DataError, match="missing"):
        embedded.load_embedded("train", path=tmp_path / "none.npz")


@pytest.mark.slow
def test_generator_reproduces_the_committed_bytes():
    """Byte equality holds with the library versions named in embedded/README.md (Pillow's resampling,
    the JPEG decoder and zlib all enter the bytes)."""
    r = subprocess.run([sys.executable, str(ROOT / "scripts/make_embedded_dataset.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
