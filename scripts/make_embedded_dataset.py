"""Generate the embedded default data set `ddpm_bench/data/embedded/patches32.npz`.

32x32 RGB patches cut from the public-domain / CC0 colour photographs bundled with scikit-image
(no download), deterministic for a given seed:

- each photograph is divided into a 3x3 grid of blocks; 2 of the 9 blocks (drawn with the seed) are
  test blocks, the other 7 train blocks, so no test patch shares a pixel with a train patch;
- a patch is a square crop of side s, uniform in [32, min(160, block height, block width)], at a
  uniform position inside one block (uniform among the split's blocks), downscaled to 32x32 with
  Pillow's Lanczos filter (antialiased); crops with a standard deviation below 2 (featureless, such as
  the black corners around the retina) are drawn again;
- every photograph gives the same number of patches (up to one), and each split is shuffled so that
  any prefix (`--num-images`) mixes all photographs.

The npz is written with fixed zip timestamps so that running the script again gives the same bytes.

    python scripts/make_embedded_dataset.py            # writes the file, prints its sha256
    python scripts/make_embedded_dataset.py --check    # regenerates in memory, compares with the file
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import skimage
import skimage.data
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "ddpm_bench" / "data" / "embedded" / "patches32.npz"

# (skimage.data function, bundled file, licence as stated in its docstring)
PHOTOS = [
    ("astronaut", "astronaut.png", "public domain (NASA)"),
    ("chelsea", "chelsea.png", "CC0 (Stefan van der Walt)"),
    ("coffee", "coffee.png", "CC0 (Rachel Michetti)"),
    ("rocket", "rocket.jpg", "public domain (SpaceX)"),
    ("hubble_deep_field", "hubble_deep_field.jpg", "public domain (NASA)"),
    ("retina", "retina.jpg", "CC0 1.0 (Mikael Häggström)"),
]
GRID = 3  # blocks per side
TEST_BLOCKS = 2  # of GRID * GRID
PATCH = 32
MAX_CROP = 160
MIN_STD = 2.0
SEED = 20200619  # the DDPM arXiv date
NUM_TRAIN = 2000
NUM_TEST = 500


def split_blocks(rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Block indices (row-major in the GRID x GRID grid) for train and test."""
    test = sorted(int(b) for b in rng.choice(GRID * GRID, size=TEST_BLOCKS, replace=False))
    return [b for b in range(GRID * GRID) if b not in test], test


def cut_patches(photo: np.ndarray, blocks: list[int], num: int, rng: np.random.Generator) -> np.ndarray:
    """`num` 32x32 patches from random square crops inside `blocks` of `photo`: uint8 (num, 32, 32, 3)."""
    h, w = photo.shape[0] // GRID, photo.shape[1] // GRID
    max_side = min(MAX_CROP, h, w)
    out = np.empty((num, PATCH, PATCH, 3), dtype=np.uint8)
    i = 0
    while i < num:
        block = blocks[int(rng.integers(len(blocks)))]
        side = int(rng.integers(PATCH, max_side + 1))
        y = (block // GRID) * h + int(rng.integers(0, h - side + 1))
        x = (block % GRID) * w + int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side])
        patch = np.asarray(crop.resize((PATCH, PATCH), Image.Resampling.LANCZOS), dtype=np.uint8)
        if patch.std() >= MIN_STD:
            out[i] = patch
            i += 1
    return out


def shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` counts that differ by at most one."""
    return [total // parts + (k < total % parts) for k in range(parts)]


def make_dataset(seed: int = SEED) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for (name, _, _), n_train, n_test in zip(PHOTOS, shares(NUM_TRAIN, len(PHOTOS)), shares(NUM_TEST, len(PHOTOS)),
                                              strict=True):
        photo = getattr(skimage.data, name)()
        if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
            raise SystemExit(f"skimage.data.{name}: expected uint8 RGB, got {photo.dtype} {photo.shape}")
        train_blocks, test_blocks = split_blocks(rng)
        train.append(cut_patches(photo, train_blocks, n_train, rng))
        test.append(cut_patches(photo, test_blocks, n_test, rng))
    splits = {"train": np.concatenate(train), "test": np.concatenate(test)}
    return {k: v[rng.permutation(len(v))] for k, v in splits.items()}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (np.load reads it) with fixed timestamps and order, so equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, a in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(a), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buf.getvalue()


def source_report() -> list[str]:
    """One line per photograph: file, licence, sha256 of the bundled file."""
    data_dir = Path(skimage.data.__file__).parent
    lines = []
    for _, file, licence in PHOTOS:
        path = data_dir / file
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "NOT BUNDLED"
        lines.append(f"{file}  {licence}  sha256 {digest}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the npz")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)

    data = npz_bytes(make_dataset(args.seed))
    digest = hashlib.sha256(data).hexdigest()
    print(f"scikit-image {skimage.__version__}, numpy {np.__version__}, Pillow {Image.__version__}")
    print("\n".join(source_report()))
    if args.check:
        old = hashlib.sha256(args.out.read_bytes()).hexdigest()
        print(f"regenerated sha256 {digest}\n{args.out} sha256 {old}")
        return 0 if old == digest else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".npz.tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(data)} bytes) sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
