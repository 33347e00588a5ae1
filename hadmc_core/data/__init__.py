"""Datasets with fixed, documented train/validation/test splits.

Splits (seed 0, see docs/data.md):
- ``fashion-mnist``: the official 60,000 training images give train (first 55,000 of a
  seeded permutation) and validation (the other 5,000); test is the official 10,000.
- ``digits``: scikit-learn's 1,797 8x8 images, seeded permutation 70% / 15% / 15%.
- ``.npz`` (arrays ``x``, ``y``) and image folders (``DIR/<class>/<image>``): seeded
  permutation 80% / 10% / 10%.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_core.errors import DatasetError, DatasetTooLargeError, UnknownNameError

BUILTIN = ("fashion-mnist", "digits")
SPLIT_SEED = 0
MIN_SAMPLES = 10
#: Train and validation fractions of a file or folder dataset (test is the rest).
FILE_SPLIT = (0.80, 0.10)


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
    #: how the images were fitted to a model's input (``data.adapt``), None when they were not
    adaptation: dict[str, Any] | None = field(default=None, kw_only=True)
    #: validation images taken from the end of the training split (``with_validation``)
    val_from_train: int = field(default=0, kw_only=True)

    @property
    def in_channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.x.shape[2]), int(self.train.x.shape[3])


def with_validation(data: DataSplits, n: int) -> DataSplits:
    """``data`` with ``n`` validation images: the dataset's own followed by the last ones of
    its training split (a seeded permutation for every built-in reader, so these are a
    random sample). DatasetError when the training split cannot give them and keep one."""
    extra = n - len(data.val)
    if extra <= 0:
        return data
    if extra >= len(data.train):
        raise DatasetError(f"{data.name}: {n} validation images would take {extra} of the "
                           f"{len(data.train)} training images; ask for fewer")
    keep = len(data.train) - extra
    train = Split(data.train.x[:keep], data.train.y[:keep])
    val = Split(np.concatenate([data.val.x, data.train.x[keep:]]),
                np.concatenate([data.val.y, data.train.y[keep:]]))
    return replace(data, train=train, val=val, val_from_train=data.val_from_train + extra)


def _nchw_shape(shape: tuple[int, ...], source: str) -> tuple[int, ...]:
    """The N x C x H x W shape images of ``shape`` take (see ``_to_nchw``)."""
    out = shape
    if len(shape) == 3:
        out = (shape[0], 1, *shape[1:])
    elif len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        out = (shape[0], shape[3], shape[1], shape[2])
    if len(out) != 4 or out[1] not in (1, 3, 4) or min(out[2:]) < 4:
        raise DatasetError(
            f"{source}: images must be N x H x W, N x C x H x W or N x H x W x C with C in "
            f"1, 3, 4 and sides >= 4; got shape {tuple(shape)}")
    return out


def _to_nchw(x: np.ndarray, source: str) -> np.ndarray:
    shape = _nchw_shape(tuple(x.shape), source)
    if x.ndim == 3:
        return x[:, None]
    return x if x.shape == shape else x.transpose(0, 3, 1, 2)


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


def _split_sizes(n: int, fr: tuple[float, float], name: str) -> tuple[int, int, int]:
    if n < MIN_SAMPLES:
        raise DatasetError(f"{name}: need at least {MIN_SAMPLES} samples, got {n}")
    n_tr, n_va = int(n * fr[0]), int(n * fr[1])
    return n_tr, n_va, n - n_tr - n_va


def _split_by_fraction(x: np.ndarray, y: np.ndarray, fr: tuple[float, float], name: str,
                       num_classes: int | None = None) -> DataSplits:
    n = len(y)
    n_tr, n_va, _ = _split_sizes(n, fr, name)
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
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
    return _split_by_fraction(x, y, FILE_SPLIT, str(path), num_classes)


def describe_npz(path: Path, *, max_bytes: int, max_samples: int,
                 source: str | None = None) -> dict[str, Any]:
    """What ``load_dataset`` would make of the ``.npz`` at ``path`` (classes, channels, image
    size, samples per split), with bounded memory: sizes come from the ``.npy`` headers,
    only the labels are loaded, and the images are read a chunk at a time for their CRCs.
    DatasetTooLargeError over ``max_bytes`` inflated or ``max_samples``; DatasetError for a
    file ``load_dataset`` would refuse."""
    from hadmc_core.data import npzfile

    source = source or str(path)
    members = npzfile.read_headers(path, source)
    if "x" not in members or "y" not in members:
        raise DatasetError(f"{source}: an .npz dataset needs arrays 'x' and 'y', found "
                           f"{sorted(members)}")
    inflated = sum(m.file_size for m in members.values())
    if inflated > max_bytes:
        raise DatasetTooLargeError(
            f"{source} inflates to {inflated} bytes, over the limit of {max_bytes} bytes",
            limit="bytes")
    x, y = members["x"], members["y"]
    n = x.shape[0] if x.shape else 0
    if n > max_samples:
        raise DatasetTooLargeError(f"{source} holds {n} samples, over the limit of "
                                   f"{max_samples}", limit="samples")
    shape = _nchw_shape(x.shape, source)
    for m in (x, y):
        if m.dtype.kind not in "biuf":
            raise DatasetError(f"{source}: array '{m.name}' must be numeric, not {m.dtype}")
    if y.shape != (n,):
        raise DatasetError(f"{source}: labels must be a 1-D array of {n} entries, got "
                           f"{y.shape}")
    splits = _split_sizes(n, FILE_SPLIT, source)
    npzfile.verify_members(path, source)
    labels = _check_labels(npzfile.load_member(path, "y", source), n, source)
    return {"num_classes": int(labels.max()) + 1, "in_channels": shape[1],
            "image_size": list(shape[2:]),
            "samples": dict(zip(("train", "val", "test"), splits, strict=True))}
