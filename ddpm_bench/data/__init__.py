"""Data sources (SPEC section 2): `.npz`, PNG folders, CIFAR-10 python files, sample directories and the
embedded default data set. Every source becomes an `ImageSet` of uint8 NHWC images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ddpm_bench.errors import DataError


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # (N, H, W, C) uint8, C in {1, 3}
    index: np.ndarray  # (N,) int64 dataset indices of the rows
    source: str  # canonical name of the source: "cifar10:test", "embedded:train", an absolute path
    sha256: str  # of the selected images (provenance)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        n, h, w, c = self.images.shape
        return c, h, w

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def identity(self) -> dict:
        """What a number computed on these images is tied to: their content, never their path."""
        return {"sha256": self.sha256, "n_images": len(self), "shape": list(self.shape)}


def validate_images(images: np.ndarray, origin: str) -> np.ndarray:
    """Check an array is (N, H, W, C) uint8 with C in {1, 3}; a clear DataError otherwise."""
    if not isinstance(images, np.ndarray):
        raise DataError(f"{origin}: expected an array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        if images.dtype.kind in "fc" and images.size and not np.isfinite(images).all():
            raise DataError(f"{origin}: images must be uint8 in 0..255, got {images.dtype} holding NaN or inf")
        lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
        raise DataError(f"{origin}: images must be uint8 in 0..255, got {images.dtype} with range [{lo:g}, {hi:g}]")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{origin}: images must be (N, H, W, C) with C in {{1, 3}}, got shape {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{origin}: holds no images")
    return images


def select(images: np.ndarray, index: np.ndarray, source: str, num_images: int | None) -> ImageSet:
    """The first `num_images` images (all when None); more than the source holds is an error."""
    from ddpm_bench.provenance import sha256_array

    if num_images is not None:
        if num_images < 1:
            raise DataError(f"--num-images must be at least 1, got {num_images}")
        if num_images > len(images):
            raise DataError(f"--num-images {num_images} is larger than {source}, which holds {len(images)} images")
        images, index = images[:num_images], index[:num_images]
    images = np.ascontiguousarray(images)
    return ImageSet(images=images, index=np.asarray(index, dtype=np.int64), source=source,
                    sha256=sha256_array(images))


@dataclass(frozen=True)
class DataSpec:
    """A data source as the command line or a recipe names it (SPEC section 2, `--data`)."""

    source: str
    data_root: str | None = None
    num_images: int | None = None  # the first N images; None = all

    def __post_init__(self) -> None:
        if not self.source or not str(self.source).strip():
            raise DataError("--data: empty (give cifar10:train|test, embedded:train|test, PATH.npz or a PNG folder)")
        if self.num_images is not None and self.num_images < 1:
            raise DataError(f"--num-images must be at least 1, got {self.num_images}")

    def load(self) -> ImageSet:
        return load_images(self.source, self.data_root, self.num_images)


def sample_dir_manifest() -> str:
    """The file that makes a folder a sample directory (ddpm_bench.outputs.SampleManifest)."""
    from ddpm_bench.outputs import SampleManifest

    return SampleManifest.FILE


def load_images(src: str, data_root: str | None = None, num_images: int | None = None) -> ImageSet:
    """Load a data source by name (see the module docstring)."""
    if not src.strip():  # Path("") is the current directory: never what an empty --data meant
        raise DataError(f"--data: empty{'' if src == '' else f' ({src!r})'}; give a data source, e.g. embedded:test")
    if src.startswith("cifar10:"):
        from ddpm_bench.data.cifar10 import load_cifar10

        images = load_cifar10(src.split(":", 1)[1], data_root)
        return select(images, np.arange(len(images)), src, num_images)
    if src.startswith("embedded:"):
        from ddpm_bench.data.embedded import load_embedded

        images = load_embedded(src.split(":", 1)[1])
        return select(images, np.arange(len(images)), src, num_images)
    path = Path(src)
    if not path.exists():
        raise DataError(f"--data {src}: no such file or directory")
    if path.is_file() and path.suffix == ".npz":
        from ddpm_bench.data.npz import load_npz

        images = load_npz(path)
    elif path.is_dir() and (path / sample_dir_manifest()).exists():
        from ddpm_bench.data.sample_dir import load_sample_dir

        images = load_sample_dir(path)
    elif path.is_dir():
        from ddpm_bench.data.png_folder import load_png_folder

        images = load_png_folder(path)
    else:
        raise DataError(f"--data {src}: not a .npz file, a folder of PNG files or a known name "
                        "(cifar10:train, cifar10:test, embedded:train, embedded:test)")
    return select(images, np.arange(len(images)), str(path.resolve()), num_images)
