"""CIFAR-10 reader on small files in the format of the official "python version" batches.

The official files were written by Python 2 (cPickle, protocol 2): byte strings as SHORT_BINSTRING /
BINSTRING and the array through `numpy.core.multiarray._reconstruct`. `py2_batch_pickle` writes exactly
those opcodes, so the reader is tested on what it will meet, not on a Python 3 re-pickling.
"""

from __future__ import annotations

import hashlib
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ddpm_bench.data import cifar10, load_images
from ddpm_bench.errors import DataError


def _str(b: bytes) -> bytes:
    return (b"U" + struct.pack("<B", len(b)) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _int(i: int) -> bytes:
    return b"K" + struct.pack("<B", i) if 0 <= i < 256 else b"J" + struct.pack("<i", i)


def _array(a: np.ndarray) -> bytes:
    assert a.dtype == np.uint8 and a.ndim == 2
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _int(0) + b"\x85" + _str(b"b")
            + b"\x87R" + b"(" + _int(1) + _int(a.shape[0]) + _int(a.shape[1]) + b"\x86"
            + b"cnumpy\ndtype\n" + _str(b"u1") + _int(0) + _int(1) + b"\x87R"
            + b"(" + _int(3) + _str(b"|") + b"NNN" + _int(-1) + _int(-1) + _int(0) + b"tb"
            + b"\x89" + _str(a.tobytes()) + b"tb")


def _list(items: list) -> bytes:
    return b"](" + b"".join(_int(x) if isinstance(x, int) else _str(x) for x in items) + b"e"


def py2_batch_pickle(data: np.ndarray, labels: list[int], batch_label: bytes) -> bytes:
    """A batch dict pickled as Python 2's cPickle.dump(d, f, 2) writes it."""
    filenames = [b"img_%05d.png" % i for i in range(len(labels))]
    items = [(b"batch_label", _str(batch_label)), (b"labels", _list(labels)), (b"data", _array(data)),
             (b"filenames", _list(filenames))]
    return b"\x80\x02}(" + b"".join(_str(k) + v for k, v in items) + b"u."


def image_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072) in the CIFAR layout: R plane, G plane, B plane, each row-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def write_batches(folder: Path, n: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Write data_batch_1..5 and test_batch with n images each; returns the NHWC images per file."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for k, name in enumerate(cifar10.FILE_MD5):
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        images[:, 0, 0, 0] = k  # which file a row came from
        (folder / name).write_bytes(py2_batch_pickle(image_rows(images), [int(x) for x in rng.integers(0, 10, n)],
                                                     b"batch %d" % k))
        written[name] = images
    return written


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No network, no real cache, no $DDPM_BENCH_DATA."""
    monkeypatch.setenv("DDPM_BENCH_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DDPM_BENCH_DATA", raising=False)
    monkeypatch.delenv("DDPM_BENCH_SKIP_CIFAR_MD5", raising=False)
    return tmp_path


def test_channel_layout_known_pixel(isolated):
    folder = isolated / "root" / "cifar-10-batches-py"
    data = np.zeros((2, 3072), dtype=np.uint8)
    # image 1, row 5, column 7: R=200, G=100, B=50; the row is R plane, then G plane, then B plane
    data[1, 0 * 1024 + 5 * 32 + 7] = 200
    data[1, 1 * 1024 + 5 * 32 + 7] = 100
    data[1, 2 * 1024 + 5 * 32 + 7] = 50
    folder.mkdir(parents=True)
    (folder / "test_batch").write_bytes(py2_batch_pickle(data, [3, 4], b"testing batch 1 of 1"))
    images = cifar10.load_cifar10("test", isolated / "root", verify=False)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert images[1, 5, 7].tolist() == [200, 100, 50]
    assert int(images.sum()) == 350  # nothing else is set


def test_train_order_and_root_forms(isolated):
    written = write_batches(isolated / "root" / "cifar-10-batches-py", n=3)
    expected = np.concatenate([written[f"data_batch_{i}"] for i in range(1, 6)])
    for root in (isolated / "root", isolated / "root" / "cifar-10-batches-py"):  # parent or the folder itself
        train = cifar10.load_cifar10("train", root, verify=False)
        assert train.shape == (15, 32, 32, 3)
        np.testing.assert_array_equal(train, expected)
        assert train[:, 0, 0, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    test = cifar10.load_cifar10("test", isolated / "root", verify=False)
    np.testing.assert_array_equal(test, written["test_batch"])


def test_md5_is_checked_unless_skipped(isolated, monkeypatch):
    write_batches(isolated / "root" / "cifar-10-batches-py", n=2)
    with pytest.raises(DataError, match=r"test_batch: checksum mismatch.*DDPM_BENCH_SKIP_CIFAR_MD5=1"):
        cifar10.load_cifar10("test", isolated / "root")
    monkeypatch.setenv("DDPM_BENCH_SKIP_CIFAR_MD5", "1")
    assert cifar10.load_cifar10("test", isolated / "root").shape == (2, 32, 32, 3)


def test_environment_variable_and_load_images(isolated, monkeypatch):
    write_batches(isolated / "envroot" / "cifar-10-batches-py", n=4)
    monkeypatch.setenv("DDPM_BENCH_DATA", str(isolated / "envroot"))
    monkeypatch.setenv("DDPM_BENCH_SKIP_CIFAR_MD5", "1")
    s = load_images("cifar10:train", num_images=7)
    assert s.source == "cifar10:train" and s.images.shape == (7, 32, 32, 3) and s.index.tolist() == list(range(7))
    with pytest.raises(DataError, match="num_images=21 is larger than cifar10:train, which holds 20"):
        load_images("cifar10:train", num_images=21)


def test_missing_file_is_named(isolated):
    folder = isolated / "root" / "cifar-10-batches-py"
    write_batches(folder, n=2)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as e:
        cifar10.load_cifar10("train", isolated / "root", verify=False)
    msg = str(e.value)
    assert "data_batch_3 not found" in msg and str(folder) in msg and cifar10.URL in msg
    assert "data_root='DIR'" in msg and "DDPM_BENCH_DATA" in msg and "\n" not in msg
    assert not (isolated / "cache" / "ddpm-bench" / "cifar-10-batches-py").exists()  # offline: no download


def test_unknown_split_and_foreign_pickle(isolated):
    with pytest.raises(DataError, match="unknown split"):
        cifar10.load_cifar10("valid", isolated, verify=False)
    folder = isolated / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"\x80\x02cos\nsystem\nq\x00.")  # not a batch: a global we refuse
    with pytest.raises(DataError, match="os.system is not allowed"):
        cifar10.load_cifar10("test", isolated, verify=False)
    (folder / "test_batch").write_bytes(py2_batch_pickle(np.zeros((2, 3072), np.uint8), [1, 2], b"x")[:-40])
    with pytest.raises(DataError, match="not a readable CIFAR-10 batch"):
        cifar10.load_cifar10("test", isolated, verify=False)


def _archive(tmp: Path, written_from: Path) -> Path:
    tar_path = tmp / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(written_from, arcname="cifar-10-batches-py")
    return tar_path


def test_download_extracts_atomically(isolated):
    src = isolated / "src" / "cifar-10-batches-py"
    written = write_batches(src, n=2)
    archive = _archive(isolated, src)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    fetched = []

    def fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        dest.write_bytes(archive.read_bytes())

    dest_root = isolated / "cache" / "ddpm-bench"
    folder = cifar10.download(dest_root, fetch=fetch, archive_md5=md5)
    assert fetched == [cifar10.URL] and folder == dest_root / "cifar-10-batches-py"
    np.testing.assert_array_equal(cifar10.read_batch(folder / "test_batch"), written["test_batch"])
    assert sorted(p.name for p in dest_root.iterdir()) == ["cifar-10-batches-py"]  # no temporary left over


def test_download_bad_archive_leaves_nothing(isolated):
    def fetch(url: str, dest: Path) -> None:
        dest.write_bytes(b"not the archive")

    dest_root = isolated / "cache" / "ddpm-bench"
    with pytest.raises(DataError, match="md5"):
        cifar10.download(dest_root, fetch=fetch)
    assert list(dest_root.iterdir()) == []

    def offline(url: str, dest: Path) -> None:
        raise OSError("network is unreachable")

    with pytest.raises(DataError, match="network is unreachable"):
        cifar10.download(dest_root, fetch=offline)
    assert list(dest_root.iterdir()) == []


def test_load_downloads_when_missing(isolated, monkeypatch):
    """With the network allowed (here: a local fetch) a missing split is downloaded into the cache."""
    monkeypatch.delenv("DDPM_BENCH_OFFLINE")
    src = isolated / "src" / "cifar-10-batches-py"
    written = write_batches(src, n=2)
    archive = _archive(isolated, src)
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    images = cifar10.load_cifar10("test", isolated / "empty", verify=False,
                                  fetch=lambda url, dest: dest.write_bytes(archive.read_bytes()))
    np.testing.assert_array_equal(images, written["test_batch"])
    assert (isolated / "cache" / "ddpm-bench" / "cifar-10-batches-py" / "test_batch").is_file()
