"""CIFAR-10 from the standard "CIFAR-10 python version" files (Krizhevsky 2009).

`cifar-10-batches-py/data_batch_1..5` (train, 50,000 images in that order) and `test_batch` (test, 10,000)
are pickled dicts with `b'data'`, uint8 (10000, 3072): each row the 1024 red, then 1024 green, then
1024 blue values of a 32x32 image in row-major order, and `b'labels'`.

Where the files are looked for, in order: `data_root` (`--data-root`), `$DDPM_BENCH_DATA`, and the cache
folder (`$XDG_CACHE_HOME/ddpm-bench`, default `~/.cache/ddpm-bench`). Each may be the folder that holds
`cifar-10-batches-py` or that folder itself. When none holds the files, the official archive is
downloaded into the cache, checked against its md5 and extracted atomically (to a temporary folder that
is renamed into place), unless `$DDPM_BENCH_OFFLINE=1`.

Each file is checked against the official md5. Files that are not the official ones (e.g. small files in
the same format, written by tests) are accepted only with `verify=False` or `$DDPM_BENCH_SKIP_CIFAR_MD5=1`.
The pickles are read with an unpickler that allows only the numpy array constructors they need.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ddpm_bench.arguments import given
from ddpm_bench.data.images import validate_images
from ddpm_bench.errors import DataError
from ddpm_bench.provenance import file_digest

FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FILE_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
SPLITS = {
    "train": ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
    "test": ["test_batch"],
}
ENV_DATA = "DDPM_BENCH_DATA"
ENV_OFFLINE = "DDPM_BENCH_OFFLINE"
ENV_SKIP_MD5 = "DDPM_BENCH_SKIP_CIFAR_MD5"
DOWNLOAD_TIMEOUT_S = 30.0

Fetch = Callable[[str, Path], None]  # (url, destination file) -> None; raises OSError when it cannot


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ddpm-bench"


def search_roots(data_root: str | Path | None) -> list[Path]:
    """The places looked in, in order: --data-root, $DDPM_BENCH_DATA, the cache folder."""
    roots = [Path(data_root)] if data_root else []
    if os.environ.get(ENV_DATA):
        roots.append(Path(os.environ[ENV_DATA]))
    roots.append(cache_dir())
    return [r.expanduser() for r in roots]


def batches_folder(root: Path) -> Path:
    """`root/cifar-10-batches-py`, or `root` itself when it is that folder (holds the batch files)."""
    if root.name == FOLDER or any((root / n).exists() for n in ("batches.meta", "data_batch_1", "test_batch")):
        return root
    return root / FOLDER


def find_split(names: list[str], roots: list[Path]) -> Path | None:
    """The first folder among `roots` that holds every file in `names`."""
    for root in roots:
        folder = batches_folder(root)
        if all((folder / n).is_file() for n in names):
            return folder
    return None


def urllib_fetch(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f, length=1 << 20)


def download(dest_root: Path, fetch: Fetch = urllib_fetch, url: str = URL, archive_md5: str | None = None) -> Path:
    """Download the archive into `dest_root`, check its md5 and extract `cifar-10-batches-py` atomically:
    everything goes to a temporary folder inside `dest_root` that is renamed into place at the end, so an
    interrupted download never leaves a folder that looks complete. Returns the batches folder."""
    archive_md5 = archive_md5 or ARCHIVE_MD5
    final = dest_root / FOLDER
    if final.exists():
        raise DataError(f"{final}: exists but is incomplete; remove it so that it can be downloaded again")
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".cifar10-download-", dir=dest_root))
    try:
        archive = tmp / "cifar-10-python.tar.gz"
        fetch(url, archive)
        got = file_digest(archive, "md5")
        if got != archive_md5:
            raise DataError(f"{url}: downloaded archive has md5 {got}, expected {archive_md5}; try again later")
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name == FOLDER or m.name.startswith(FOLDER + "/")]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp / "x", members=members, filter="data")
            else:  # Python without extraction filters: refuse anything unusual ourselves
                for m in members:
                    if not (m.isfile() or m.isdir()) or ".." in Path(m.name).parts:
                        raise DataError(f"{url}: unexpected archive member {m.name}")
                tar.extractall(tmp / "x", members=members)
        extracted = tmp / "x" / FOLDER
        if not extracted.is_dir():
            raise DataError(f"{url}: the archive holds no {FOLDER} folder")
        os.replace(extracted, final)
    except (OSError, tarfile.TarError, EOFError) as e:
        raise DataError(f"could not download CIFAR-10 from {url} into {dest_root}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def missing_message(split: str, names: list[str], roots: list[Path]) -> str:
    """One line: which file is missing, where we looked, how to get it."""
    folders = [batches_folder(r) for r in roots]
    first = next((f for f in folders if f.is_dir()), folders[0])  # the first place that has the folder
    missing = next((n for n in names if not (first / n).is_file()), names[0])
    places = ", ".join(str(f) for f in folders)
    return (f"cifar10:{split}: file {missing} not found (looked in {places}); download {URL} "
            f"(md5 {ARCHIVE_MD5}), extract it into a folder DIR so that DIR/{FOLDER}/{missing} exists, "
            f"and pass {given('data_root', 'DIR')} or set ${ENV_DATA}=DIR")


def locate(split: str, data_root: str | Path | None, fetch: Fetch | None) -> Path:
    """The folder holding the files of `split`, downloading them into the cache if allowed."""
    names = SPLITS[split]
    roots = search_roots(data_root)
    folder = find_split(names, roots)
    if folder is not None:
        return folder
    offline = os.environ.get(ENV_OFFLINE, "") not in ("", "0")
    if offline or fetch is None:
        raise DataError(missing_message(split, names, roots) + ("" if not offline else f" (${ENV_OFFLINE} is set)"))
    try:
        return download(cache_dir(), fetch)
    except DataError as e:
        folder = find_split(names, roots)  # another process may have finished the same download
        if folder is not None:
            return folder
        raise DataError(f"{missing_message(split, names, roots)}; the download failed: {e}") from None


class _BatchUnpickler(pickle.Unpickler):
    """Only what a CIFAR-10 batch needs: a dict of bytes, lists and one numpy array."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def read_batch(path: Path) -> np.ndarray:
    """One batch file as uint8 (N, 32, 32, 3): rows are R, G, B planes of 32x32 in row-major order."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 batch file: {e}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' must be uint8 (N, 3072), got {desc}")
    labels = batch[b"labels"]
    if not isinstance(labels, (list, tuple, np.ndarray)) or len(labels) != data.shape[0]:
        what = f"{len(labels)} labels" if isinstance(labels, (list, tuple, np.ndarray)) else f"a {type(labels).__name__}"
        raise DataError(f"{path}: b'labels' must be a list of one label per image; got {what} for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def verify_md5(path: Path, expected: str) -> None:
    got = file_digest(path, "md5")
    if got != expected:
        raise DataError(f"{path}: checksum mismatch: md5 {got}, the official file has {expected}; "
                        f"set ${ENV_SKIP_MD5}=1 to accept a file that is not the official one")


def cifar10_notes() -> tuple[str, ...]:
    """What a CIFAR-10 image set's provenance records of how it was checked."""
    if os.environ.get(ENV_SKIP_MD5, "") in ("", "0"):
        return ()
    return (f"CIFAR-10 files accepted without their md5 check (${ENV_SKIP_MD5}={os.environ[ENV_SKIP_MD5]}): "
            "they may not be the official files",)


def load_cifar10(split: str, data_root: str | Path | None = None, verify: bool | None = None,
                 fetch: Fetch | None = urllib_fetch) -> np.ndarray:
    """CIFAR-10 `split` ("train": data_batch_1..5 in order, 50,000; "test": test_batch, 10,000) as
    uint8 (N, 32, 32, 3). `verify=None` checks md5s unless `$DDPM_BENCH_SKIP_CIFAR_MD5=1`;
    `fetch=None` never downloads."""
    if split not in SPLITS:
        raise DataError(f"cifar10:{split}: unknown split; use cifar10:train or cifar10:test")
    if verify is None:
        verify = os.environ.get(ENV_SKIP_MD5, "") in ("", "0")
    folder = locate(split, data_root, fetch)
    parts = []
    for name in SPLITS[split]:
        path = folder / name
        if verify:
            verify_md5(path, FILE_MD5[name])
        parts.append(read_batch(path))
    images = np.ascontiguousarray(np.concatenate(parts, axis=0))
    return validate_images(images, str(folder))
