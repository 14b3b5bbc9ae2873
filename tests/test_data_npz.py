"""`.npz` sources and the shared checks (`validate_images`, `select`, `load_images`)."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm_bench.data import load_images, select
from ddpm_bench.data.npz import load_npz
from ddpm_bench.errors import DataError, UserError


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_good_npz_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 8, 6, 3), dtype=np.uint8)
    p = _save(tmp_path / "x.npz", arr_0=images)
    s = load_images(str(p), num_images=4)
    np.testing.assert_array_equal(s.images, images[:4])
    assert s.shape == (3, 8, 6) and len(s) == 4 and s.source == str(p.resolve())
    assert s.index.dtype == np.int64 and s.index.tolist() == [0, 1, 2, 3]
    gray = _save(tmp_path / "g.npz", arr_0=images[..., :1])
    assert load_npz(gray).shape == (5, 8, 6, 1)


def test_float_array_names_its_range(tmp_path):
    p = _save(tmp_path / "f.npz", arr_0=np.linspace(-1, 1, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3).astype(np.float32))
    with pytest.raises(DataError, match=r"f\.npz: images must be uint8 in 0\.\.255, got float32 with range \[-1, 1\]"):
        load_npz(p)


def test_out_of_range_integers(tmp_path):
    a = np.zeros((2, 4, 4, 3), dtype=np.int64)
    a[0, 0, 0, 0] = 300
    with pytest.raises(DataError, match=r"got int64 with range \[0, 300\]"):
        load_npz(_save(tmp_path / "i.npz", arr_0=a))


@pytest.mark.parametrize("shape", [(4, 4, 3), (2, 4, 4, 2), (2, 4, 4, 4), (2, 3, 4, 4, 3)])
def test_wrong_shape_or_channels(tmp_path, shape):
    p = _save(tmp_path / "s.npz", arr_0=np.zeros(shape, np.uint8))
    with pytest.raises(DataError, match=r"must be \(N, H, W, C\) with C in \{1, 3\}, got shape"):
        load_npz(p)


def test_empty_array(tmp_path):
    with pytest.raises(DataError, match="holds no images"):
        load_npz(_save(tmp_path / "e.npz", arr_0=np.zeros((0, 4, 4, 3), np.uint8)))


def test_no_arr_0(tmp_path):
    p = _save(tmp_path / "n.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"n\.npz: no array 'arr_0' \(found images\)"):
        load_npz(p)


def test_truncated_file(tmp_path):
    p = _save(tmp_path / "t.npz", arr_0=np.zeros((20, 8, 8, 3), np.uint8))
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DataError, match=r"t\.npz: not a readable \.npz file"):
        load_npz(p)


def test_select_more_than_the_set(tmp_path):
    images = np.zeros((3, 4, 4, 1), np.uint8)
    with pytest.raises(DataError, match="num_images=4 is larger than src, which holds 3 images"):
        select(images, np.arange(3), "src", 4)
    with pytest.raises(DataError, match="at least 1"):
        select(images, np.arange(3), "src", 0)
    assert len(select(images, np.arange(3), "src", None)) == 3


def test_unknown_source(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        load_images(str(tmp_path / "missing.npz"))
    other = tmp_path / "x.csv"
    other.write_text("1,2\n")
    with pytest.raises(DataError, match="not a .npz file, a folder of PNG files or a known name"):
        load_images(str(other))
