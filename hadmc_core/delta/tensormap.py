"""Channel maps between a base tensor and a reshaped (pruned) target tensor of the same name.

Structured pruning keeps a subset of channels along some axes, so the target tensor is
close to ``base[np.ix_(axis0, axis1, ...)]``. The encoder finds those per-axis index lists
by matching word values; the map travels in the delta header, and the chunk payload is
the XOR/SUB residual against the gathered base, so any mapping is exact (a bad one only
costs bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hadmc_core.delta.codec import UINT
from hadmc_core.delta.errors import FormatError
from hadmc_core.delta.formats import ITEMSIZE

MAX_MAP_ENTRIES = 1 << 22  # summed over a delta's maps
MAP_SAMPLE = 1 << 16  # target words matched to find a map
HASH_BITS = 20


@dataclass
class TensorMap:
    base_offset: int            # global offset of the base tensor in the concatenated base
    base_shape: list[int]
    dtype: str
    axes: list[list[int] | None]  # per axis: base index of each target index (None: same)

    def to_dict(self) -> dict[str, Any]:
        return {"base_offset": self.base_offset, "base_shape": self.base_shape,
                "dtype": self.dtype, "axes": self.axes}

    @classmethod
    def from_dict(cls, d: Any, target_shape: list[int], base_size: int) -> TensorMap:
        """Parse and check a map against the target tensor's shape and the base's size."""
        try:
            m = cls(int(d["base_offset"]), [int(x) for x in d["base_shape"]], str(d["dtype"]),
                    [None if a is None else [int(i) for i in a] for a in d["axes"]])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FormatError(f"delta tensor map is malformed: {e}") from e
        if (m.dtype not in ITEMSIZE or len(m.axes) != len(target_shape)
                or len(m.base_shape) != len(target_shape)):
            raise FormatError("delta tensor map does not fit its tensor")
        count = ITEMSIZE[m.dtype]
        for d_base in m.base_shape:
            count *= max(d_base, 0)
        if m.base_offset < 0 or m.base_offset + count > base_size:
            raise FormatError("delta tensor map points past the base files")
        for ax, (a, n, nb) in enumerate(zip(m.axes, target_shape, m.base_shape, strict=True)):
            if a is None:
                if n > nb:
                    raise FormatError(f"delta tensor map axis {ax} is out of range")
            elif len(a) != n or (a and (min(a) < 0 or max(a) >= nb)):
                raise FormatError(f"delta tensor map axis {ax} is out of range")
        return m

    def entries(self) -> int:
        return sum(len(a) for a in self.axes if a is not None)

    def gather(self, base: np.ndarray, shape: list[int], start: int, stop: int) -> bytes:
        """Gathered base words for target elements [start, stop) (``base`` flat, any dtype
        of the right item size)."""
        idx = np.unravel_index(np.arange(start, stop, dtype=np.int64), shape)
        src = tuple(i if a is None else np.asarray(a, np.int64)[i]
                    for i, a in zip(idx, self.axes, strict=True))
        flat = np.ravel_multi_index(src, self.base_shape)
        return base[flat].tobytes()


def _slots(v: np.ndarray) -> np.ndarray:
    """Fibonacci hashing of words into ``2**HASH_BITS`` slots."""
    h = v.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return (h >> np.uint64(64 - HASH_BITS)).astype(np.int64)


def _lookup(vals: np.ndarray, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index into ``words``, index into ``vals``) of every word equal to one of ``vals``
    (distinct); a hash table instead of a binary search (one random access per word).
    Values sharing a slot are left out, which only loses votes."""
    hv = _slots(vals)
    table = np.full(1 << HASH_BITS, -1, np.int64)
    alone = np.bincount(hv, minlength=1 << HASH_BITS)[hv] == 1
    table[hv[alone]] = np.flatnonzero(alone)
    k = table[_slots(words)]
    cand = np.flatnonzero(k >= 0)
    cand = cand[vals[k[cand]] == words[cand]]
    return cand, k[cand]


def find_map(old: np.ndarray, new: np.ndarray) -> list[list[int] | None] | None:
    """Per-axis index lists such that ``old[ix_(...)]`` best matches ``new``, or None.

    Values are matched one to one: a sample of the target's words whose value is unique in
    the sample, each against the base words of the same value when exactly one has it (so
    constants and repeated values cast no vote); every base word is looked up in the small
    sorted sample, which is fast. Each target index then takes the base index most of its
    matched values came from."""
    if old.ndim != new.ndim or old.ndim == 0 or new.size == 0 or any(
            n > o for n, o in zip(new.shape, old.shape, strict=True)):
        return None
    ov = old.reshape(-1).view(UINT[old.itemsize])
    nv = new.reshape(-1).view(UINT[new.itemsize])
    idx = np.arange(nv.size)
    if nv.size > MAP_SAMPLE:
        idx = np.sort(np.random.default_rng(0).choice(nv.size, MAP_SAMPLE, replace=False))
    vals, first, counts = np.unique(nv[idx], return_index=True, return_counts=True)
    vals, sample = vals[counts == 1], idx[first[counts == 1]]
    if vals.size == 0:
        return None
    old_i, new_k = _lookup(vals, ov)
    votes = np.bincount(new_k, minlength=vals.size)
    if (votes > 0).mean() < 0.2:
        return None
    once = votes[new_k] == 1
    if not once.any():
        return None
    src = np.unravel_index(old_i[once], old.shape)
    dst = np.unravel_index(sample[new_k[once]], new.shape)
    axes: list[list[int] | None] = []
    for ax in range(old.ndim):
        n_new, n_old = new.shape[ax], old.shape[ax]
        key = dst[ax].astype(np.int64) * n_old + src[ax]
        uniq, cnt = np.unique(key, return_counts=True)
        js, os_ = uniq // n_old, uniq % n_old
        best = np.lexsort((-cnt, js))
        first = best[np.r_[True, js[best][1:] != js[best][:-1]]]
        mapping = np.minimum(np.arange(n_new), n_old - 1)
        mapping[js[first]] = os_[first]
        if n_new == n_old and np.array_equal(mapping, np.arange(n_new)):
            axes.append(None)
        else:
            axes.append(mapping.tolist())
    return axes


def gathered(old: np.ndarray, axes: list[list[int] | None], shape: tuple[int, ...]) -> bytes:
    """The whole gathered base tensor (encoder side)."""
    ix = [np.arange(n) if a is None else np.asarray(a) for a, n in zip(axes, shape,
                                                                        strict=True)]
    return np.ascontiguousarray(old[np.ix_(*ix)]).tobytes()
