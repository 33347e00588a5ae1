"""Delta engine: exact reconstruction, every attack rejected, the output never created."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from hadmc_core.cli import _register, app
from hadmc_core.delta import (
    BaseMismatchError,
    ChunkMismatchError,
    ExpiredError,
    FormatError,
    RollbackError,
    SignatureError,
    TruncatedDeltaError,
    apply_delta,
    build_manifest,
    diff,
    diff_from_manifest,
    generate_keys,
    load_private,
    load_public,
)
from hadmc_core.delta.keys import SignedManifest
from hadmc_core.delta.manifest import Manifest


def _weights(rng, scale=1.0):
    return {f"layer{i}.weight": (rng.standard_normal((64, 64, 3, 3)) * 0.05 * scale)
            .astype(np.float32) for i in range(3)} | {
        "fc.weight": rng.standard_normal((10, 64)).astype(np.float32),
        "q.int8": rng.integers(-128, 127, 5000).astype(np.int8)}


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    w1 = _weights(rng)
    w2 = {k: v.copy() for k, v in w1.items()}
    w2["layer2.weight"] += rng.standard_normal(w2["layer2.weight"].shape).astype(np.float32) * 1e-4
    w2["fc.weight"] += 0.01
    w2["q.int8"][::7] += 1
    save_file(w1, str(tmp_path / "v1.safetensors"))
    save_file(w2, str(tmp_path / "v2.safetensors"))
    priv, pub = generate_keys(tmp_path / "k.pem")
    return tmp_path, load_private(priv), load_public(pub)


def _patch(tmp, priv, version=2, **kw):
    data, stats = diff(tmp / "v1.safetensors", tmp / "v2.safetensors", priv, version=version,
                       **kw)
    (tmp / "p.delta").write_bytes(data)
    return tmp / "p.delta", stats


def test_round_trip_is_byte_exact_and_small(files):
    tmp, priv, pub = files
    patch, stats = _patch(tmp, priv)
    m = apply_delta(tmp / "v1.safetensors", patch, tmp / "out.safetensors", public_key=pub,
                    min_version=2)
    assert (tmp / "out.safetensors").read_bytes() == (tmp / "v2.safetensors").read_bytes()
    assert m.version == 2 and not stats.fallback
    assert stats.ops["ref"] > 0, "unchanged tensors are references"
    assert stats.delta_bytes < 0.5 * stats.full_zstd_bytes


def test_manifest_is_canonical_and_covers_tensors(files):
    tmp, _priv, _pub = files
    a = build_manifest(tmp / "v1.safetensors", now=1000)
    b = build_manifest(tmp / "v1.safetensors", now=1000)
    assert a.to_bytes() == b.to_bytes()
    names = {s.name for s in a.files[0].segments if s.name}
    assert names == {"layer0.weight", "layer1.weight", "layer2.weight", "fc.weight", "q.int8"}
    assert Manifest.from_bytes(a.to_bytes()).root == a.root


def test_onnx_initializers_are_tensors(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 16])],
                          [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g), str(tmp_path / "a.onnx"))
    g.initializer[0].CopyFrom(numpy_helper.from_array(w + 1e-3, "w"))
    onnx.save(helper.make_model(g), str(tmp_path / "b.onnx"))
    m = build_manifest(tmp_path / "b.onnx")
    seg = next(s for s in m.files[0].segments if s.name == "w")
    assert m.files[0].format == "onnx" and seg.dtype == "float32" and seg.shape == [32, 16]
    data, stats = diff(tmp_path / "a.onnx", tmp_path / "b.onnx")
    (tmp_path / "p").write_bytes(data)
    apply_delta(tmp_path / "a.onnx", tmp_path / "p", tmp_path / "c.onnx")
    assert (tmp_path / "c.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_shape_change_and_unrelated_file_fall_back(tmp_path):
    rng = np.random.default_rng(1)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": rng.standard_normal((64, 64)).astype(np.float32)}, str(a))
    save_file({"w": rng.standard_normal((32, 64)).astype(np.float32)}, str(b))
    data, stats = diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert stats.delta_bytes <= stats.full_zstd_bytes + 4096
    (tmp_path / "p").write_bytes(data)
    apply_delta(tmp_path / "a.safetensors", tmp_path / "p", tmp_path / "c.safetensors")
    assert (tmp_path / "c.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_delta_from_device_manifest_alone(files):
    tmp, priv, pub = files
    device = build_manifest(tmp / "v1.safetensors")
    data, stats = diff_from_manifest(device, tmp / "v2.safetensors", priv, version=2)
    assert "xor" not in stats.ops and stats.ops["ref"] > 0
    (tmp / "m.delta").write_bytes(data)
    apply_delta(tmp / "v1.safetensors", tmp / "m.delta", tmp / "o", public_key=pub)
    assert (tmp / "o").read_bytes() == (tmp / "v2.safetensors").read_bytes()


def _header_end(data: bytes) -> int:
    return 12 + int.from_bytes(data[8:12], "little")


def _flip_payload(d):
    d[-10] ^= 0xFF


def _flip_manifest(d):
    i = d.index(b'"version":2')
    d[i + 10] = ord("3")


def _flip_signature(d):
    i = d.index(b'"signature":"') + 14
    d[i] = ord("0") if d[i] != ord("0") else ord("1")


ATTACKS = {
    "flipped-chunk-byte": (_flip_payload, ChunkMismatchError),
    "flipped-manifest-byte": (_flip_manifest, SignatureError),
    "flipped-signature": (_flip_signature, SignatureError),
    "truncated": (lambda d: d.__delitem__(slice(len(d) - 100, None)), TruncatedDeltaError),
    "truncated-header": (lambda d: d.__delitem__(slice(40, None)), FormatError),
    "bad-magic": (lambda d: d.__setitem__(slice(0, 8), b"NOTADLTA"), FormatError),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_tampering_is_rejected_and_output_not_created(files, attack):
    tmp, priv, pub = files
    patch, _ = _patch(tmp, priv)
    data = bytearray(patch.read_bytes())
    mutate, error = ATTACKS[attack]
    mutate(data)
    patch.write_bytes(bytes(data))
    with pytest.raises(error):
        apply_delta(tmp / "v1.safetensors", patch, tmp / "out", public_key=pub)
    assert not (tmp / "out").exists()
    assert not list(tmp.glob(".out.*")), "no temporary file left"


def test_wrong_key(files):
    tmp, priv, _pub = files
    _p2, pub2 = generate_keys(tmp / "other.pem")
    patch, _ = _patch(tmp, priv)
    with pytest.raises(SignatureError, match="bad manifest signature"):
        apply_delta(tmp / "v1.safetensors", patch, tmp / "out", public_key=load_public(pub2))
    assert not (tmp / "out").exists()


def test_unsigned_delta_with_pinned_key(files):
    tmp, _priv, pub = files
    patch, _ = _patch(tmp, None)
    with pytest.raises(SignatureError, match="not signed"):
        apply_delta(tmp / "v1.safetensors", patch, tmp / "out", public_key=pub)


def test_rollback_and_expiry(files):
    tmp, priv, pub = files
    patch, _ = _patch(tmp, priv, version=2)
    with pytest.raises(RollbackError, match="lower than the highest accepted"):
        apply_delta(tmp / "v1.safetensors", patch, tmp / "out", public_key=pub, min_version=3)
    with pytest.raises(ExpiredError, match="expired"):
        apply_delta(tmp / "v1.safetensors", patch, tmp / "out", public_key=pub,
                    now=time.time() + 400 * 86400)
    assert not (tmp / "out").exists()


def test_wrong_base(files):
    tmp, priv, pub = files
    patch, _ = _patch(tmp, priv)
    with pytest.raises(BaseMismatchError, match="not the version this delta was made against"):
        apply_delta(tmp / "v2.safetensors", patch, tmp / "out", public_key=pub)
    assert not (tmp / "out").exists()


def test_mix_and_match_chunks_from_another_model(files, tmp_path):
    """A payload spliced from another model's delta fails on the first chunk it touches."""
    tmp, priv, pub = files
    patch, _ = _patch(tmp, priv)
    other = tmp_path / "other"
    other.mkdir()
    rng = np.random.default_rng(9)
    save_file(_weights(rng, 2.0), str(other / "v1.safetensors"))
    save_file(_weights(rng, 3.0), str(other / "v2.safetensors"))
    odata, _ = diff(other / "v1.safetensors", other / "v2.safetensors", priv, version=2)
    mine = patch.read_bytes()
    n_ops = sum(len(s.chunks) for s in build_manifest(tmp / "v2.safetensors").files[0].segments)
    cut = _header_end(mine) + 13 * n_ops
    ocut = _header_end(odata) + 13 * n_ops
    patch.write_bytes(mine[:cut] + odata[ocut:ocut + len(mine) - cut])
    with pytest.raises((ChunkMismatchError, FormatError, TruncatedDeltaError)) as e:
        apply_delta(tmp / "v1.safetensors", patch, tmp / "out", public_key=pub)
    assert "chunk" in str(e.value) or "delta" in str(e.value)
    assert not (tmp / "out").exists()


def test_manifest_with_oversized_claims_is_refused():
    bad = {"format": "hadmc.manifest/1", "model": "m", "version": 1, "created": 0,
           "expires": 0, "chunk_size": 65536, "root": "",
           "files": [{"path": "f", "format": "raw", "size": 10**15, "blake3": "", "segments": []}]}
    with pytest.raises(FormatError, match="out of range"):
        Manifest.from_bytes(json.dumps(bad).encode())


def test_fuzzed_deltas_end_in_clean_errors(files):
    """Random mutations of a real delta: only DeltaError subclasses, never a crash."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from hadmc_core.errors import DeltaError

    tmp, priv, pub = files
    patch, _ = _patch(tmp, priv)
    original = patch.read_bytes()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)),
                    min_size=1, max_size=4), st.integers(0, len(original)))
    def run(flips, cut):
        data = bytearray(original[:max(cut, 1)])
        for pos, val in flips:
            if pos < len(data):
                data[pos] = val
        p = tmp / "fz.delta"
        p.write_bytes(bytes(data))
        try:
            apply_delta(tmp / "v1.safetensors", p, tmp / "fz.out", public_key=pub)
        except DeltaError:
            assert not (tmp / "fz.out").exists()
        else:
            assert (tmp / "fz.out").read_bytes() == (tmp / "v2.safetensors").read_bytes()
            (tmp / "fz.out").unlink()

    run()


def test_cli_round_trip_and_failure(files):
    tmp, _priv, _pub = files
    _register()
    r = CliRunner()
    res = r.invoke(app, ["keys", "generate", "-o", str(tmp / "cli.pem")])
    assert res.exit_code == 0, res.output
    assert (tmp / "cli.pem").stat().st_mode & 0o777 == 0o600
    res = r.invoke(app, ["delta", "diff", str(tmp / "v1.safetensors"), str(tmp / "v2.safetensors"),
                         "-o", str(tmp / "c.delta"), "--sign", str(tmp / "cli.pem"),
                         "--version", "5"])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["delta", "apply", str(tmp / "v1.safetensors"), str(tmp / "c.delta"),
                         "-o", str(tmp / "c.out"), "--public-key", str(tmp / "cli.pub")])
    assert res.exit_code == 0, res.output
    assert (tmp / "c.out").read_bytes() == (tmp / "v2.safetensors").read_bytes()
    res = r.invoke(app, ["delta", "apply", str(tmp / "v2.safetensors"), str(tmp / "c.delta"),
                         "-o", str(tmp / "d.out"), "--public-key", str(tmp / "cli.pub")])
    assert res.exit_code == 2 and "Traceback" not in res.output and not (tmp / "d.out").exists()
    res = r.invoke(app, ["delta", "manifest", str(tmp / "v2.safetensors"), "--sign",
                         str(tmp / "cli.pem"), "-o", str(tmp / "m.json")])
    assert res.exit_code == 0
    assert SignedManifest.from_bytes((tmp / "m.json").read_bytes()).signature
    Path(tmp / "m.json").unlink()
