"""An image set: uint8 NHWC images with their data-set indices, the name of their source and their hash;
the checks every source's images pass (a leaf of the data package: every format module imports it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpm_bench.arguments import given, named
from ddpm_bench.errors import DataError


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # (N, H, W, C) uint8, C in {1, 3}
    index: np.ndarray  # (N,) int64 dataset indices of the rows
    source: str  # canonical name of the source: "cifar10:test", "embedded:train", an absolute path
    sha256: str  # of the selected images (provenance)
    notes: tuple[str, ...] = ()  # what was not checked as usual (e.g. CIFAR-10 files accepted without their md5)

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
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise DataError(f"{origin}: images of height {images.shape[1]} and width {images.shape[2]}: both must be >= 1")
    return images


def select(images: np.ndarray, index: np.ndarray, source: str, num_images: int | None) -> ImageSet:
    """The first `num_images` images (all when None); more than the source holds is an error."""
    from ddpm_bench.provenance import sha256_array

    if num_images is not None:
        if num_images < 1:
            raise DataError(f"{named('num_images')} must be at least 1, got {num_images}")
        if num_images > len(images):
            raise DataError(f"{given('num_images', num_images)} is larger than {source}, which holds {len(images)} images")
        images, index = images[:num_images], index[:num_images]
    images = np.ascontiguousarray(images)
    return ImageSet(images=images, index=np.asarray(index, dtype=np.int64), source=source,
                    sha256=sha256_array(images))
