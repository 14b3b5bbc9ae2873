"""A folder of PNG files (lossless only), all of one size, read as uint8 (N, H, W, C).

Rules, chosen so that a folder is read the same way everywhere and nothing is silently changed:
- every `*.png` directly in the folder (case-insensitive suffix, not recursive), sorted by file name;
  hidden files and files that are not images (`.json`, `.txt`, ...) are ignored;
- JPEG/WebP/AVIF/HEIC files are refused ("lossy files are not accepted"), and other image formats
  (BMP, TIFF, GIF, ...) are refused too: convert them to PNG first;
- 8-bit (or lower) PNGs only; 16-bit PNGs are refused, since the images are 0..255 by definition;
- grayscale -> C = 1; RGB -> C = 3; a palette image is expanded to RGB (an exact lookup);
  an alpha channel is dropped when it is fully opaque (255 everywhere) and refused otherwise,
  because there is no lossless way to flatten transparency;
- all files must share height, width and channel count.
Every error is a DataError naming the file.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ddpm_bench.data.images import validate_images
from ddpm_bench.errors import DataError

LOSSY_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".avif", ".heic", ".heif", ".jxl", ".jp2"}
OTHER_IMAGE_SUFFIXES = {".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".exr"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_files(folder: Path) -> list[Path]:
    """The PNG files of `folder`, sorted by name; a DataError for any other image file."""
    pngs = []
    for p in sorted(folder.iterdir(), key=lambda q: q.name):
        if p.name.startswith(".") or not p.is_file():
            continue
        suffix = p.suffix.lower()
        if suffix == ".png":
            pngs.append(p)
        elif suffix in LOSSY_SUFFIXES:
            raise DataError(f"{p}: lossy files are not accepted in a PNG folder (the bound needs the exact pixels)")
        elif suffix in OTHER_IMAGE_SUFFIXES:
            raise DataError(f"{p}: only PNG files are read from a folder; convert it to PNG")
    if not pngs:
        raise DataError(f"{folder}: holds no PNG files")
    return pngs


def png_bit_depth(path: Path) -> int:
    """The bit depth per sample from the PNG header (IHDR), read directly: Pillow silently reduces
    16-bit RGB to 8 bits, so its mode cannot tell."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise DataError(f"{path}: not a PNG file (no PNG signature and header)")
    return struct.unpack(">B", head[24:25])[0]


def read_png(path: Path) -> np.ndarray:
    """One PNG file as uint8 (H, W, C), C in {1, 3}, following the module's rules."""
    if png_bit_depth(path) > 8:
        raise DataError(f"{path}: 16-bit PNGs are not accepted; images must be 8-bit (0..255)")
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise DataError(f"{path}: not a PNG file (it is {im.format})")
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            elif im.mode in ("L", "RGB") and "transparency" in im.info:
                im = im.convert("LA" if im.mode == "L" else "RGBA")
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                raise DataError(f"{path}: unsupported PNG mode {im.mode}; expected 8-bit grayscale or RGB")
            a = np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable or truncated PNG file: {e}") from None
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[-1] in (2, 4):  # LA / RGBA
        alpha = a[..., -1]
        if (alpha != 255).any():
            raise DataError(f"{path}: has transparent pixels (alpha < 255); flatten it to RGB or grayscale first")
        a = a[..., :-1]
    return a


def load_png_folder(path: str | Path) -> np.ndarray:
    """All PNG files of a folder as uint8 (N, H, W, C), in file-name order."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    files = png_files(folder)
    first = read_png(files[0])
    images = np.empty((len(files), *first.shape), dtype=np.uint8)
    images[0] = first
    for i, p in enumerate(files[1:], start=1):
        a = read_png(p)
        if a.shape != first.shape:
            raise DataError(
                f"{p}: is {_describe(a.shape)} but {files[0].name} is {_describe(first.shape)}; "
                "all images of a folder must have one size and channel count"
            )
        images[i] = a
    return validate_images(images, str(folder))


def _describe(shape: tuple[int, ...]) -> str:
    h, w, c = shape
    return f"{h}x{w} with {c} channel{'s' if c > 1 else ''}"
