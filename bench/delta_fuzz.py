"""Time-bounded fuzzing of the delta and manifest parsers (``bench/delta.py --fuzz-minutes``).

Three targets, run in turn until the time is up: mutated and truncated deltas given to
``apply_delta`` (each must end in a DeltaError with no output file, or rebuild the exact
target); random bytes and mutated real manifests given to every parser; manifests whose
fields are replaced by random JSON. Any other exception is a failure and is raised.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROUND = 200  # examples per target per round


CFG = settings(max_examples=ROUND, deadline=None, database=None,
               suppress_health_check=list(HealthCheck))


def _deltas(old: Path, new: Path, patch: bytes, work: Path, counts: dict[str, int]):
    """Mutated and truncated deltas: a DeltaError and no output, or the exact target."""
    from hadmc_core.delta import apply_delta
    from hadmc_core.errors import DeltaError

    expect = new.read_bytes()

    @CFG
    @given(st.lists(st.tuples(st.integers(0, len(patch) - 1), st.integers(0, 255)),
                    max_size=6), st.integers(1, len(patch)))
    def run(flips, cut):
        (work / "fz.delta").write_bytes(_flip(patch[:cut], flips))
        out = work / "fz.out"
        try:
            apply_delta(old, work / "fz.delta", out)
        except DeltaError:
            counts["delta_rejected"] += 1
            assert not out.exists(), "a refused delta must leave no output"
        else:
            assert out.read_bytes() == expect, "an accepted delta must rebuild the target"
            counts["delta_applied"] += 1
            out.unlink()

    return run


def _parsers(good: bytes, counts: dict[str, int]):
    """Random bytes and mutated real manifests to every parser."""
    from hadmc_core.delta import SignedManifest, read_prefix
    from hadmc_core.delta.formats import safetensors_segments
    from hadmc_core.delta.manifest import Manifest
    from hadmc_core.delta.onnxwire import onnx_tensors
    from hadmc_core.errors import DeltaError

    parsers = (Manifest.from_bytes, SignedManifest.from_bytes, safetensors_segments,
               onnx_tensors, lambda d: read_prefix(io.BytesIO(d)))

    @CFG
    @given(st.one_of(st.binary(max_size=2000),
                     st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)),
                              min_size=1, max_size=8).map(lambda fl: _flip(good, fl))))
    def run(data):
        for p in parsers:
            with contextlib.suppress(DeltaError):
                p(data)
        counts["parser_inputs"] += 1

    return run


JUNK = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                    | st.text(max_size=8), lambda k: st.lists(k, max_size=3)
                    | st.dictionaries(st.text(max_size=6), k, max_size=3), max_leaves=8)
KEYS = ["model", "version", "created", "expires", "chunk_size", "files", "root", "extra",
        "format", "f.path", "f.size", "f.format", "f.segments", "s.offset", "s.length",
        "s.shape", "s.chunks", "s.dtype", "s.name"]


def _fields(good: bytes, counts: dict[str, int]):
    """Real manifests with one field replaced by random JSON."""
    from hadmc_core.delta.manifest import Manifest
    from hadmc_core.errors import DeltaError

    @CFG
    @given(st.sampled_from(KEYS), JUNK)
    def run(key, value):
        d = json.loads(good)
        where, _, k = key.rpartition(".")
        {"": d, "f": d["files"][0], "s": d["files"][0]["segments"][-1]}[where][k] = value
        with contextlib.suppress(DeltaError):
            Manifest.from_bytes(json.dumps(d).encode())
        counts["manifest_fields"] += 1

    return run


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, val in flips:
        if pos < len(out):
            out[pos] = val
    return bytes(out)


def fuzz(old: Path, new: Path, patch: bytes, work: Path, minutes: float) -> dict:
    """Run the targets in rounds until ``minutes`` have passed; counts of each outcome."""
    from hadmc_core.delta import build_manifest

    counts = {"delta_rejected": 0, "delta_applied": 0, "parser_inputs": 0,
              "manifest_fields": 0}
    good = build_manifest(new).to_bytes()
    targets = (_deltas(old, new, patch, work, counts), _parsers(good, counts),
               _fields(good, counts))
    t0, rounds = time.perf_counter(), 0
    while time.perf_counter() - t0 < minutes * 60:
        for target in targets:
            target()
        rounds += 1
    return {**counts, "rounds": rounds, "seconds": round(time.perf_counter() - t0, 1),
            "delta_bytes": len(patch), "base": old.name, "target": new.name}
