"""Fit a dataset's images to a model's input (channels, height, width).

Rules (docs/data.md):

- Size: when the model's input is at least as large as the images on both sides and at most
  25 % larger on each (28x28 into 32x32), the images are padded, centred, by repeating their
  border pixels; otherwise they are resized with bilinear interpolation (antialiased when
  shrinking, as PIL does). A resize may change the aspect ratio.
- Channels: 1 -> 3 replicates the grey channel; 3 -> 1 is the luminance
  (0.299 R + 0.587 G + 0.114 B); 4 -> 3 drops the fourth (alpha) channel; 4 -> 1 is the
  luminance of the first three. Anything else (2 -> 3, 3 -> 4, ...) is a DatasetError.
- Channels computed from others are standardized again with the training split's mean and
  standard deviation, as the loader does (``hadmc_core.data``).

numpy only, a chunk of images at a time; the adapted dataset is refused (DatasetTooLargeError)
when it would exceed ``max_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hadmc_core.data import DataSplits, Split
from hadmc_core.errors import DatasetError, DatasetTooLargeError

#: Largest growth per side, as a fraction of the image side, that is padded, not resized.
MAX_PAD = 0.25
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
#: Largest adapted dataset (all three splits, float32) held in memory.
MAX_BYTES = 8 << 30
CHUNK = 512

Step = Callable[[np.ndarray], np.ndarray]


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _check_target(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise DatasetError(
            f"the model takes inputs of shape {shape}, but dataset images are fitted only to "
            "an input of (channels, height, width)")
    return shape[0], shape[1], shape[2]


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear resampling with half-pixel centres; the triangle
    filter widens by the scale when shrinking (antialiasing), edges are renormalized."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    src = np.arange(n_in, dtype=np.float64) + 0.5
    w = np.clip(1.0 - np.abs(src[None, :] - centres[:, None]) / support, 0.0, None)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _padding(size: int, target: int) -> tuple[int, int]:
    before = (target - size) // 2
    return before, target - size - before


def pads(hw: tuple[int, int], target: tuple[int, int]) -> bool:
    """Whether ``hw`` goes to ``target`` by padding (see module doc)."""
    return all(s <= t <= s + MAX_PAD * s for s, t in zip(hw, target, strict=True))


def _spatial(hw: tuple[int, int], target: tuple[int, int]) -> tuple[str, Step]:
    if pads(hw, target):
        (top, bottom), (left, right) = _padding(hw[0], target[0]), _padding(hw[1], target[1])

        def pad(x: np.ndarray) -> np.ndarray:
            return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode="edge")

        return "padded", pad
    rows, cols = resize_matrix(hw[0], target[0]), resize_matrix(hw[1], target[1])

    def resize(x: np.ndarray) -> np.ndarray:
        return np.matmul(rows, np.matmul(x, cols.T))

    return "resized", resize


def _channels(have: int, want: int) -> tuple[str, Step, bool]:
    """What turns ``have`` channels into ``want``: (words, step, standardize again)."""
    if have == 1 and want == 3:
        return "replicated to 3 channels", lambda x: np.repeat(x, 3, axis=1), False
    if have == 4 and want == 3:
        return "stripped of their fourth (alpha) channel", lambda x: x[:, :3], False
    if have in (3, 4) and want == 1:
        words = "converted to 1 channel by luminance"
        if have == 4:
            words = "stripped of their fourth (alpha) channel and " + words
        return words, lambda x: np.einsum("nchw,c->nhw", x[:, :3], LUMA)[:, None], True
    raise DatasetError(
        f"dataset images have {have} channel(s) but the model takes {want}; HAD-MC fits "
        "1 -> 3 (replicated), 3 -> 1 (luminance), 4 -> 3 (alpha dropped) and 4 -> 1; "
        "give images with the model's channel count")


def _apply(x: np.ndarray, steps: list[Step], shape: tuple[int, int, int]) -> np.ndarray:
    out = np.empty((x.shape[0], *shape), np.float32)
    for start in range(0, x.shape[0], CHUNK):
        part = x[start:start + CHUNK]
        for step in steps:
            part = step(part)
        out[start:start + CHUNK] = part
    return out


def _standardize(splits: list[np.ndarray]) -> None:
    """In place: zero mean, unit standard deviation per channel, from the training split."""
    mean = splits[0].mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
    std = splits[0].std(axis=(0, 2, 3), keepdims=True, dtype=np.float64) + 1e-6
    for x in splits:
        x -= mean.astype(np.float32)
        x /= std.astype(np.float32)


def _plan(have: tuple[int, int, int], want: tuple[int, int, int]
          ) -> tuple[list[Step], list[str], bool]:
    """The steps from ``have`` to ``want``, their words, and whether to standardize again.
    Fewer channels are made before resizing, more after (less work either way)."""
    steps: list[Step] = []
    words: list[str] = []
    channel = _channels(have[0], want[0]) if have[0] != want[0] else None
    first = channel is not None and want[0] < have[0]
    if channel is not None and first:
        words.append(channel[0])
        steps.append(channel[1])
    if have[1:] != want[1:]:
        how, step = _spatial((have[1], have[2]), (want[1], want[2]))
        c = want[0] if first else have[0]
        words.append(f"{how} to {_shape_text((c, want[1], want[2]))}")
        steps.append(step)
    if channel is not None and not first:
        words.append(channel[0])
        steps.append(channel[1])
    return steps, words, channel is not None and channel[2]


def adapt(data: DataSplits, input_shape: tuple[int, ...], *,
          max_bytes: int = MAX_BYTES) -> tuple[DataSplits, str | None]:
    """``data`` with images fitted to ``input_shape`` (C, H, W), and the one line that says
    what was done (None when the images already fit)."""
    want = _check_target(input_shape)
    have = (data.in_channels, *data.image_size)
    if have == want:
        return data, None
    n = len(data.train) + len(data.val) + len(data.test)
    need = n * want[0] * want[1] * want[2] * 4
    if need > max_bytes:
        raise DatasetTooLargeError(
            f"fitting {n} images of {_shape_text(have)} to the model's input "
            f"{_shape_text(want)} takes {need / 2**30:.1f} GiB, over the limit of "
            f"{max_bytes / 2**30:.1f} GiB; use fewer images or a model with a smaller input",
            limit="bytes")
    steps, words, restandardize = _plan(have, want)
    xs = [_apply(s.x, steps, want) for s in (data.train, data.val, data.test)]
    if restandardize:
        _standardize(xs)
    line = (f"dataset images {_shape_text(have)} {' and '.join(words)} to fit the model's "
            f"input {_shape_text(want)}")
    out = DataSplits(data.name, Split(xs[0], data.train.y), Split(xs[1], data.val.y),
                     Split(xs[2], data.test.y), data.num_classes,
                     adaptation={"from": list(have), "to": list(want), "steps": words,
                                 "restandardized": restandardize, "message": line})
    return out, line
