"""Reference statistics, computed once per (source, extractor, backend mode, count) and cached.

An entry is one `.npz` file holding the reference features (float32, for KID and precision/recall), their
float64 mean and covariance, and `meta`: the full key (data source and the sha256 of its images, image
count and shape, extractor name and the sha256 of its weights, backend, mode, feature layer, library
version) and a checksum of the arrays. The file name carries a digest of the key; on lookup the stored
key and checksum must match exactly, otherwise the entry is recomputed, never reused. The same file can
be given as `--ref`: then a key that contradicts the run (another extractor, mode or size) is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ddpm_bench.errors import DataError, UserError
from ddpm_bench.messages import note, warn
from ddpm_bench.shards import atomic_write_npz

FORMAT = "ddpm-bench/reference-statistics/1"
CACHE_ENV = "DDPM_BENCH_CACHE"


class ReferenceMismatch(UserError):
    """A reference statistics file built for another extractor, mode, backend or size."""


@dataclass(frozen=True)
class ReferenceKey:
    source: str  # canonical data source name
    source_sha256: str  # of the reference images used
    count: int
    image_shape: tuple[int, int, int]  # (H, W, C)
    extractor: str
    weights_sha256: str
    backend: str  # torch-fidelity | clean-fid
    mode: str  # tf1-bilinear | clean | legacy_tensorflow
    layer: str  # feature layer
    library: str  # library and version

    def as_dict(self) -> dict:
        d = asdict(self)
        d["image_shape"] = list(self.image_shape)
        return {"format": FORMAT, **d}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()


def default_cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "ddpm-bench")
    return Path(root) / "fid"


def entry_path(cache_dir: str | Path, key: ReferenceKey) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", Path(key.source).name if "/" in key.source else key.source).strip("_")
    return Path(cache_dir) / f"{slug}-{key.extractor}-{key.backend}-{key.mode}-n{key.count}-{key.digest()[:16]}.npz"


def _content_sha256(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (features, mu, sigma):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def read_entry(path: str | Path) -> tuple[dict, np.ndarray, dict]:
    """(meta, features (N, D) float32, {"mu", "sigma"} float64) of a statistics file; DataError if broken:
    unreadable, garbage, wrongly typed or not matching its checksum."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            features, mu, sigma = f["features"], f["mu"], f["sigma"]
    except Exception as e:  # garbage can fail anywhere: zipfile, the npy header, JSON, a missing array, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a readable reference statistics file: {first}") from None
    key = meta.get("key") if isinstance(meta, dict) else None
    if not isinstance(key, dict) or key.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} file")
    problem = _key_problem(key) or _array_problem(features, mu, sigma)
    if problem:
        raise DataError(f"{path}: {problem}")
    if meta.get("content_sha256") != _content_sha256(features, mu, sigma):
        raise DataError(f"{path}: arrays do not match their checksum (truncated or altered)")
    return meta, features, {"mu": mu, "sigma": sigma}


def _key_problem(key: dict) -> str | None:
    """What is wrongly typed in a stored key (its fields are read by `ddpm-bench fid`), or None."""
    for name, kind in (("source", str), ("count", int), ("image_shape", list)):
        if not isinstance(key.get(name), kind) or isinstance(key.get(name), bool):
            return f"key field {name!r} is {key.get(name)!r}, not a {kind.__name__}"
    shape = key["image_shape"]
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        return f"key field 'image_shape' is {shape!r}, not [H, W, C]"
    return None


def _array_problem(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> str | None:
    """What is wrong with the arrays' dtypes and shapes, or None: features (N, D) float32, mu (D,) and
    sigma (D, D) float64."""
    if features.dtype != np.float32 or features.ndim != 2:
        return f"features are {features.dtype} {features.shape}, not float32 (N, D)"
    d = features.shape[1]
    if mu.dtype != np.float64 or mu.shape != (d,) or sigma.dtype != np.float64 or sigma.shape != (d, d):
        return f"mu {mu.dtype} {mu.shape} and sigma {sigma.dtype} {sigma.shape} are not float64 ({d},) and ({d}, {d})"
    return None


def lookup(cache_dir: str | Path, key: ReferenceKey) -> tuple[np.ndarray, dict] | None:
    """Cached (features, stats) for exactly `key`, or None (missing, broken or another key: recompute)."""
    path = entry_path(cache_dir, key)
    if not path.exists():
        return None
    try:
        meta, features, stats = read_entry(path)
    except DataError as e:
        warn(f"cache entry unusable, recomputing and overwriting it: {e}")
        return None
    if meta["key"] != key.as_dict():
        note(f"cache entry {path} was built for another key, recomputing")
        return None
    return features, stats


def store(cache_dir: str | Path, key: ReferenceKey, features: np.ndarray, stats: dict) -> Path:
    """Write an entry atomically; returns its path."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    mu, sigma = np.asarray(stats["mu"], np.float64), np.asarray(stats["sigma"], np.float64)
    meta = {"key": key.as_dict(), "content_sha256": _content_sha256(features, mu, sigma)}
    path = entry_path(cache_dir, key)
    atomic_write_npz(path, meta=np.array(json.dumps(meta)), features=features, mu=mu, sigma=sigma)
    return path


def is_statistics_file(path: str | Path) -> bool:
    """True for a ddpm-bench reference statistics file (an .npz with `meta`, not an image array)."""
    p = Path(path)
    if not (p.is_file() and p.suffix == ".npz"):
        return False
    try:
        with np.load(p, allow_pickle=False) as f:
            return "meta" in f.files and "arr_0" not in f.files
    except Exception:  # unreadable: not a statistics file (the data loaders say what is wrong with it)
        return False


def load_statistics_file(path: str | Path, expected: dict) -> tuple[dict, np.ndarray, dict]:
    """A user-given statistics file; each field of `expected` (key field -> value) must match."""
    meta, features, stats = read_entry(path)
    key = meta["key"]
    for field, value in expected.items():
        if key.get(field) != value:
            have = key.get(field)
            raise ReferenceMismatch(f"--ref {path}: built with {field} {have!r}, this run needs {value!r}; "
                                    "give the data source instead to recompute")
    return meta, features, stats
