"""Datasets with fixed, documented train/validation/test splits.

Splits (seed 0, see docs/data.md):
- ``fashion-mnist``: the official 60,000 training images give train (first 55,000 of a
  seeded permutation) and validation (the other 5,000); test is the official 10,000.
- ``digits``: scikit-learn's 1,797 8x8 images, seeded permutation 70% / 15% / 15%.
- ``.npz`` (arrays ``x``, ``y``) and image folders (``DIR/<class>/<image>``): seeded
  permutation 80% / 10% / 10%.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hadmc_core.errors import DatasetError, UnknownNameError

BUILTIN = ("fashion-mnist", "digits")
SPLIT_SEED = 0


@dataclass
class Split:
    x: np.ndarray  # float32, N x C x H x W, normalized
    y: np.ndarray  # int64, N

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class DataSplits:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.x.shape[2]), int(self.train.x.shape[3])


def _to_nchw(x: np.ndarray, source: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4) or min(x.shape[2:]) < 4:
        raise DatasetError(
            f"{source}: images must be N x H x W, N x C x H x W or N x H x W x C with C in "
            f"1, 3, 4 and sides >= 4; got shape {tuple(x.shape)}")
    return x


def _check_labels(y: np.ndarray, n: int, source: str) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise DatasetError(f"{source}: labels must be a 1-D array of {n} entries, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise DatasetError(f"{source}: labels must be integers")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise DatasetError(f"{source}: labels must be >= 0, found {int(y.min())}")
    return y


def _normalize(x: np.ndarray, stats_from: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    ref = stats_from.astype(np.float32)
    if stats_from.dtype == np.uint8 or ref.max() > 1.5:
        x, ref = x / 255.0, ref / 255.0
    mean = ref.mean(axis=(0, 2, 3), keepdims=True)
    std = ref.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    return ((x - mean) / std).astype(np.float32)


def _split_by_fraction(x: np.ndarray, y: np.ndarray, fr: tuple[float, float], name: str,
                       num_classes: int | None = None) -> DataSplits:
    n = len(y)
    if n < 10:
        raise DatasetError(f"{name}: need at least 10 samples, got {n}")
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_tr, n_va = int(n * fr[0]), int(n * fr[1])
    idx = perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]
    classes = num_classes or int(y.max()) + 1
    if y.max() >= classes:
        raise DatasetError(f"{name}: label {int(y.max())} out of range for {classes} classes")
    xs = [_normalize(x[i], x[idx[0]]) for i in idx]
    return DataSplits(name, Split(xs[0], y[idx[0]]), Split(xs[1], y[idx[1]]),
                      Split(xs[2], y[idx[2]]), classes)


def load_dataset(name: str, num_classes: int | None = None) -> DataSplits:
    """Load a built-in dataset by name, or a ``.npz`` file / image folder by path."""
    from hadmc_core.data import sources

    if name == "fashion-mnist":
        (xtr, ytr), (xte, yte) = sources.fashion_mnist()
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(ytr))
        tr, va = perm[:55000], perm[55000:]
        xtr, xte = xtr[:, None], xte[:, None]
        return DataSplits(name, Split(_normalize(xtr[tr], xtr[tr]), ytr[tr]),
                          Split(_normalize(xtr[va], xtr[tr]), ytr[va]),
                          Split(_normalize(xte, xtr[tr]), yte), 10)
    if name == "digits":
        x, y = sources.digits()
        return _split_by_fraction(x, y, (0.70, 0.15), name, 10)
    path = Path(name)
    if path.suffix == ".npz":
        x, y = sources.npz(path)
    elif path.is_dir():
        x, y = sources.image_folder(path)
    else:
        raise UnknownNameError("dataset", name, [*BUILTIN, "<file>.npz", "<image folder>"])
    x = _to_nchw(x, str(path))
    y = _check_labels(y, x.shape[0], str(path))
    return _split_by_fraction(x, y, (0.80, 0.10), str(path), num_classes)
