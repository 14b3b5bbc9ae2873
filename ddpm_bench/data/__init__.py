"""Data sources: `.npz`, PNG folders, CIFAR-10 python files, sample directories and the
embedded default data set. Every source becomes an `ImageSet` of uint8 NHWC images."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ddpm_bench.arguments import given, named
from ddpm_bench.data.cifar10 import cifar10_notes
from ddpm_bench.data.images import ImageSet, select, validate_images
from ddpm_bench.data_sources import NAMED_SOURCES, one_distribution, source_data_set, source_split
from ddpm_bench.errors import DataError

__all__ = ["NAMED_SOURCES", "DataSpec", "ImageSet", "load_images", "one_distribution", "select", "source_data_set",
           "source_split", "validate_images"]


@dataclass(frozen=True)
class DataSpec:
    """A data source as the command line or a recipe names it."""

    source: str
    data_root: str | None = None
    num_images: int | None = None  # the first N images; None = all

    def __post_init__(self) -> None:
        if not self.source or not str(self.source).strip():
            raise DataError(f"{named('images')}: empty (give cifar10:train|test, embedded:train|test, PATH.npz or a PNG folder)")
        if self.num_images is not None and self.num_images < 1:
            raise DataError(f"{named('num_images')} must be at least 1, got {self.num_images}")

    def load(self) -> ImageSet:
        return load_images(self.source, self.data_root, self.num_images)


def sample_dir_manifest() -> str:
    """The file that makes a folder a sample directory (ddpm_bench.outputs.SampleManifest)."""
    from ddpm_bench.outputs import SampleManifest

    return SampleManifest.FILE


def load_images(src: str, data_root: str | None = None, num_images: int | None = None) -> ImageSet:
    """Load a data source by name (see the module docstring)."""
    if not src.strip():  # Path("") is the current directory: never what an empty --data meant
        raise DataError(f"{named('images')}: empty{'' if src == '' else f' ({src!r})'}; give a data source, e.g. embedded:test")
    if src.startswith("cifar10:"):
        from ddpm_bench.data.cifar10 import load_cifar10

        images = load_cifar10(src.split(":", 1)[1], data_root)
        chosen = select(images, np.arange(len(images)), src, num_images)
        return replace(chosen, notes=cifar10_notes())
    if src.startswith("embedded:"):
        from ddpm_bench.data.embedded import load_embedded

        images = load_embedded(src.split(":", 1)[1])
        return select(images, np.arange(len(images)), src, num_images)
    path = Path(src)
    if not path.exists():
        raise DataError(f"{given('images', src)}: no such file or directory")
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
        raise DataError(f"{given('images', src)}: not a .npz file, a folder of PNG files or a known name "
                        "(cifar10:train, cifar10:test, embedded:train, embedded:test)")
    return select(images, np.arange(len(images)), str(path.resolve()), num_images)
