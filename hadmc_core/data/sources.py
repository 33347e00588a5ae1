"""Readers for the raw data sources. Each returns numpy arrays; nothing is downloaded."""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np

from hadmc_core.data.npzfile import read_headers
from hadmc_core.errors import DatasetError
from hadmc_core.settings import get_settings

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
        _zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except (OSError, EOFError, struct.error, ValueError) as e:
        raise DatasetError(f"{path} is truncated or not an IDX file: {e}") from e


def fashion_mnist() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    root = get_settings().fashion_mnist_dir
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DatasetError(
            f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}). Install it "
            "with 'sudo apt-get install dataset-fashion-mnist', or set "
            "HADMC_FASHION_MNIST_DIR to a folder holding the four IDX .gz files")
    xtr, ytr, xte, yte = (_read_idx(root / n) for n in names)
    return (xtr, ytr.astype(np.int64)), (xte, yte.astype(np.int64))


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 8x8 images with values 0..16; scaled to 0..255 so normalization is uniform.
    x = (d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return x, d.target.astype(np.int64)


def npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    if not zipfile.is_zipfile(path):  # else numpy guesses "pickle" for any other bytes
        raise DatasetError(f"{path} is truncated or not a valid .npz file (a zip archive of "
                           ".npy arrays 'x' and 'y', as numpy.savez writes)")
    read_headers(path)  # numpy allocates what a header declares: check it fits the member
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DatasetError(f"{path}: an .npz dataset needs arrays 'x' and 'y', "
                                   f"found {sorted(f.files)}")
            return np.asarray(f["x"]), np.asarray(f["y"])
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(f"{path} is truncated or not a valid .npz file: {e}") from e


def image_folder(root: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{root}: an image folder needs one sub-folder per class")
    xs, ys, size, mode = [], [], None, None
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    mode = mode or ("L" if im.mode in ("L", "1", "I", "I;16") else "RGB")
                    arr = np.asarray(im.convert(mode))
            except (UnidentifiedImageError, OSError) as e:
                raise DatasetError(f"{f}: not a readable image ({e})") from e
            size = size or arr.shape
            if arr.shape != size:
                raise DatasetError(f"{f}: size {arr.shape} differs from {size}; "
                                   "resize all images to one size first")
            xs.append(arr)
            ys.append(label)
    if not xs:
        raise DatasetError(f"{root}: no images found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)
