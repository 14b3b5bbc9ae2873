"""`.npz` image files in the layout of the ADM evaluator: `arr_0`, uint8, (N, H, W, C)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ddpm_bench.data.images import validate_images
from ddpm_bench.errors import DataError


def load_npz(path: str | Path) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            raise DataError(f"{path}: a raw .npy array, not an .npz archive; save it with numpy.savez(path, images)")
        with loaded as f:
            if "arr_0" not in f.files:
                raise DataError(f"{path}: no array 'arr_0' (found {', '.join(f.files) or 'none'})")
            images = f["arr_0"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file: {e}") from None
    return validate_images(images, str(path))
