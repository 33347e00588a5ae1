"""Hostile input: every parser ends in a clean DeltaError, never a crash, hang or big alloc."""

import contextlib
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from hadmc_core.delta import SignedManifest, apply_delta, build_manifest, diff, read_prefix
from hadmc_core.delta.formats import safetensors_segments
from hadmc_core.delta.manifest import Manifest
from hadmc_core.delta.onnxwire import onnx_tensors
from hadmc_core.errors import DeltaError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fz")
    rng = np.random.default_rng(0)
    w = {"a": rng.standard_normal((64, 300)).astype(np.float32),
         "b": rng.integers(-128, 127, 4000).astype(np.int8)}
    save_file(w, str(tmp / "v1.safetensors"))
    w["a"][:20] += 1e-3
    w["b"][::5] += 1
    save_file(w, str(tmp / "v2.safetensors"))
    data, _ = diff(tmp / "v1.safetensors", tmp / "v2.safetensors", version=2)
    return tmp, data


def test_mutated_deltas(pair):
    tmp, original = pair

    @FAST
    @given(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)),
                    min_size=1, max_size=4), st.integers(1, len(original)))
    def run(flips, cut):
        data = bytearray(original[:cut])
        for pos, val in flips:
            if pos < len(data):
                data[pos] = val
        (tmp / "fz.delta").write_bytes(bytes(data))
        try:
            apply_delta(tmp / "v1.safetensors", tmp / "fz.delta", tmp / "fz.out")
        except DeltaError:
            assert not (tmp / "fz.out").exists()
        else:
            assert (tmp / "fz.out").read_bytes() == (tmp / "v2.safetensors").read_bytes()
            (tmp / "fz.out").unlink()

    run()


@FAST
@given(st.binary(max_size=400))
def test_random_bytes_to_every_parser(data):
    for parse in (Manifest.from_bytes, SignedManifest.from_bytes, safetensors_segments,
                  onnx_tensors, lambda d: read_prefix(io.BytesIO(d))):
        with contextlib.suppress(DeltaError):
            parse(data)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
                        st.text(max_size=6), kids, max_size=3), max_leaves=8)


def test_manifest_fields_replaced_by_junk(pair):
    tmp, _ = pair
    good = build_manifest(tmp / "v2.safetensors").to_dict()

    @FAST
    @given(st.sampled_from(["model", "version", "created", "expires", "chunk_size", "files",
                            "root", "extra", "format", "f.path", "f.size", "f.format",
                            "f.segments", "s.offset", "s.length", "s.shape", "s.chunks",
                            "s.dtype", "s.name"]), JSON)
    def run(key, junk):
        d = json.loads(json.dumps(good))
        where, _, k = key.rpartition(".")
        target = {"": d, "f": d["files"][0], "s": d["files"][0]["segments"][1]}[where]
        target[k] = junk
        with contextlib.suppress(DeltaError):
            Manifest.from_bytes(json.dumps(d).encode())

    run()
