"""Folders of PNG files: lossless 8-bit images of one size, read in file-name order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ddpm_bench.data import load_images
from ddpm_bench.data.png_folder import load_png_folder
from ddpm_bench.errors import DataError


def _images(n=3, h=8, w=6, c=3, seed=0):
    shape = (n, h, w) if c == 1 else (n, h, w, c)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _write(folder, images, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(images):
        Image.fromarray(a).save(folder / (names[i] if names else f"img_{i:03d}.png"))
    return folder


def test_good_rgb_folder_in_name_order(tmp_path):
    images = _images()
    folder = _write(tmp_path / "f", images, names=["b.png", "c.png", "a.png"])
    (folder / "notes.txt").write_text("ignored")
    (folder / ".hidden.png").write_bytes(b"ignored")
    got = load_png_folder(folder)
    assert got.dtype == np.uint8 and got.shape == (3, 8, 6, 3)
    np.testing.assert_array_equal(got, images[[2, 0, 1]])  # a.png, b.png, c.png
    s = load_images(str(folder), num_images=2)
    assert s.images.shape == (2, 8, 6, 3) and s.source == str(folder.resolve())


def test_grayscale_palette_and_opaque_alpha(tmp_path):
    gray = _images(c=1)
    np.testing.assert_array_equal(load_png_folder(_write(tmp_path / "g", gray)), gray[..., None])

    rgb = _images(n=2)
    folder = tmp_path / "p"
    folder.mkdir()
    Image.fromarray(rgb[0]).quantize(colors=16).save(folder / "a.png")  # palette: expanded exactly to RGB
    rgba = np.concatenate([rgb[1], np.full((8, 6, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(folder / "b.png")  # opaque alpha: dropped
    got = load_png_folder(folder)
    assert got.shape == (2, 8, 6, 3)
    expected_a = np.asarray(Image.open(folder / "a.png").convert("RGB"))
    np.testing.assert_array_equal(got[0], expected_a)
    np.testing.assert_array_equal(got[1], rgb[1])


def test_transparent_pixels_are_refused(tmp_path):
    rgba = np.full((2, 4, 4, 4), 255, np.uint8)
    rgba[1, 0, 0, 3] = 10
    folder = _write(tmp_path / "t", rgba)
    with pytest.raises(DataError, match=r"img_001\.png: has transparent pixels"):
        load_png_folder(folder)


def test_mixed_sizes_and_channels(tmp_path):
    folder = _write(tmp_path / "m", _images(n=2))
    Image.fromarray(_images(n=1, h=9)[0]).save(folder / "img_zzz.png")
    with pytest.raises(DataError, match=r"img_zzz\.png: is 9x6 with 3 channels but img_000\.png is 8x6 with 3"):
        load_png_folder(folder)
    folder = _write(tmp_path / "c", _images(n=2))
    Image.fromarray(_images(n=1, c=1)[0]).save(folder / "img_zzz.png")
    with pytest.raises(DataError, match=r"img_zzz\.png: is 8x6 with 1 channel but"):
        load_png_folder(folder)


@pytest.mark.parametrize("name", ["x.jpg", "x.JPEG", "x.webp"])
def test_lossy_file_present(tmp_path, name):
    folder = _write(tmp_path / "j", _images(n=2))
    Image.fromarray(_images(n=1)[0]).save(folder / name, format="JPEG" if "webp" not in name else "WEBP")
    with pytest.raises(DataError, match=rf"{name}: lossy files are not accepted"):
        load_png_folder(folder)


def test_other_image_formats_and_disguised_jpeg(tmp_path):
    folder = _write(tmp_path / "b", _images(n=1))
    Image.fromarray(_images(n=1)[0]).save(folder / "x.bmp")
    with pytest.raises(DataError, match=r"x\.bmp: only PNG files are read"):
        load_png_folder(folder)
    folder = _write(tmp_path / "d", _images(n=1))
    Image.fromarray(_images(n=1)[0]).save(folder / "y.png", format="JPEG")
    with pytest.raises(DataError, match=r"y\.png: not a PNG file"):
        load_png_folder(folder)


def test_truncated_png(tmp_path):
    folder = _write(tmp_path / "t", _images(n=3, h=64, w=64))
    p = folder / "img_001.png"
    p.write_bytes(p.read_bytes()[:-2000])
    with pytest.raises(DataError, match=r"img_001\.png: unreadable or truncated PNG file"):
        load_png_folder(folder)


def test_16_bit_png_refused(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(folder / "deep.png")
    assert (folder / "deep.png").read_bytes()[24] == 16  # really a 16-bit PNG
    with pytest.raises(DataError, match=r"deep\.png: 16-bit PNGs are not accepted"):
        load_png_folder(folder)


def test_folder_without_png(tmp_path):
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "readme.txt").write_text("nothing")
    with pytest.raises(DataError, match="holds no PNG files"):
        load_png_folder(folder)
    with pytest.raises(DataError, match="holds no PNG files"):
        load_images(str(folder))
