"""Delta engine: exact reconstruction, every attack rejected, the output never created."""

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

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
    codec,
    diff,
    generate_keys,
    load_private,
    load_public,
    read_body,
    read_prefix,
    sign,
)
from hadmc_core.delta.manifest import Manifest, chunks, label
from hadmc_core.errors import DeltaError


def weights(rng, scale=1.0):
    return {f"layer{i}.weight": (rng.standard_normal((64, 64, 3, 3)) * 0.05 * scale)
            .astype(np.float32) for i in range(3)} | {
        "fc.weight": rng.standard_normal((10, 64)).astype(np.float32),
        "q.int8": rng.integers(-128, 127, 5000).astype(np.int8)}


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    w1 = weights(rng)
    w2 = {k: v.copy() for k, v in w1.items()}
    w2["layer2.weight"] += rng.standard_normal(w2["layer2.weight"].shape).astype(np.float32) * 1e-4
    w2["fc.weight"] += 0.01
    w2["q.int8"][::7] += 1
    save_file(w1, str(tmp_path / "v1.safetensors"))
    save_file(w2, str(tmp_path / "v2.safetensors"))
    priv, pub = generate_keys(tmp_path / "k.pem")
    return tmp_path, load_private(priv), load_public(pub)


def make_patch(tmp, priv, version=2, name="p.delta", **kw):
    data, stats = diff(tmp / "v1.safetensors", tmp / "v2.safetensors", priv, version=version,
                       **kw)
    (tmp / name).write_bytes(data)
    return tmp / name, stats


class Parts:
    """A delta taken apart, to tamper with and put back together."""

    def __init__(self, patch: Path, base: Path) -> None:
        f = io.BytesIO(patch.read_bytes())
        base_files, cs = read_prefix(f)
        self.dict = build_manifest(base, chunk_size=cs, name=base_files[0].path).normalized()
        self.header, self.ops = read_body(f, base_files, self.dict)
        payload = f.read()
        self.blobs, pos = [], 0
        for j in range(len(self.ops) // codec.OP.size):
            n = codec.OP.unpack_from(self.ops, j * codec.OP.size)[2]
            self.blobs.append(payload[pos:pos + n])
            pos += n

    def op(self, j):
        return codec.OP.unpack_from(self.ops, j * codec.OP.size)

    def write(self, path: Path) -> None:
        path.write_bytes(self.header.to_bytes(bytes(self.ops), self.dict) + b"".join(self.blobs))


def assert_refused(tmp, patch, error, match=None, **kw):
    (tmp / "out").write_bytes(b"previous version")
    with pytest.raises(error, match=match):
        apply_delta(tmp / "v1.safetensors", patch, tmp / "out", **kw)
    assert (tmp / "out").read_bytes() == b"previous version", "OUT must stay untouched"
    assert not list(tmp.glob(".out.*")), "no temporary file left"
    (tmp / "out").unlink()


def test_round_trip_is_byte_exact_and_small(files):
    tmp, priv, pub = files
    patch, stats = make_patch(tmp, priv)
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
    segs = a.files[0].segments
    names = {s.name for s in segs if s.name}
    assert names == {"layer0.weight", "layer1.weight", "layer2.weight", "fc.weight", "q.int8"}
    data = (tmp / "v1.safetensors").read_bytes()
    assert b"".join(data[s.offset:s.offset + s.length] for s in segs) == data
    assert Manifest.from_bytes(a.to_bytes()).root == a.root


def test_flipped_payload_byte_names_the_chunk(files):
    tmp, priv, pub = files
    patch, _ = make_patch(tmp, priv)
    parts = Parts(patch, tmp / "v1.safetensors")
    m = parts.header.target.manifest
    j = next(j for j in range(len(parts.blobs)) if len(parts.blobs[j]) > 100)
    fi, seg, i, *_ = list(chunks(m))[j]
    blob = bytearray(parts.blobs[j])
    blob[len(blob) // 2] ^= 0x40
    parts.blobs[j] = bytes(blob)
    parts.write(patch)
    assert_refused(tmp, patch, ChunkMismatchError, label(m, fi, seg, i), public_key=pub)


def _tamper_manifest(parts, fix_root):
    m = parts.header.target.manifest
    seg = next(s for s in m.files[0].segments if s.name == "fc.weight")
    seg.chunks[0] = "0" * 64
    if fix_root:
        m.root = m.compute_root()


@pytest.mark.parametrize("fix_root", [False, True], ids=["root-stale", "root-recomputed"])
def test_flipped_manifest_byte_is_a_bad_signature(files, fix_root):
    tmp, priv, pub = files
    patch, _ = make_patch(tmp, priv)
    parts = Parts(patch, tmp / "v1.safetensors")
    _tamper_manifest(parts, fix_root)
    parts.write(patch)
    assert_refused(tmp, patch, SignatureError, public_key=pub)


def test_manifest_tampered_without_key_still_fails_on_hashes(files):
    tmp, priv, _pub = files
    patch, _ = make_patch(tmp, None)
    parts = Parts(patch, tmp / "v1.safetensors")
    _tamper_manifest(parts, fix_root=True)
    parts.write(patch)
    assert_refused(tmp, patch, ChunkMismatchError, "fc.weight#0")


def test_flipped_signature(files):
    tmp, priv, pub = files
    patch, _ = make_patch(tmp, priv)
    parts = Parts(patch, tmp / "v1.safetensors")
    sig = bytearray.fromhex(parts.header.target.signature)
    sig[5] ^= 1
    parts.header.target.signature = sig.hex()
    parts.write(patch)
    assert_refused(tmp, patch, SignatureError, "bad manifest signature", public_key=pub)


def test_wrong_key_and_unsigned_delta_with_pinned_key(files):
    tmp, priv, _pub = files
    _p2, pub2 = generate_keys(tmp / "other.pem")
    patch, _ = make_patch(tmp, priv)
    assert_refused(tmp, patch, SignatureError, "bad manifest signature",
                   public_key=load_public(pub2))
    unsigned, _ = make_patch(tmp, None, name="u.delta")
    assert_refused(tmp, unsigned, SignatureError, "not signed", public_key=load_public(pub2))


def test_rollback_replay_and_expiry(files):
    tmp, priv, pub = files
    old_signed, _ = make_patch(tmp, priv, version=2, name="v2.delta")
    assert_refused(tmp, old_signed, RollbackError, "lower than the highest accepted",
                   public_key=pub, min_version=3)
    assert_refused(tmp, old_signed, ExpiredError, "expired", public_key=pub,
                   now=time.time() + 400 * 86400)


def test_wrong_base(files):
    tmp, priv, pub = files
    patch, _ = make_patch(tmp, priv)
    (tmp / "v1.safetensors").rename(tmp / "real-v1")
    (tmp / "v1.safetensors").write_bytes((tmp / "v2.safetensors").read_bytes())
    assert_refused(tmp, patch, BaseMismatchError, "not the version this delta was made against",
                   public_key=pub)
    data = bytearray((tmp / "real-v1").read_bytes())
    data[-5] ^= 1  # same size, one bit off
    (tmp / "v1.safetensors").write_bytes(bytes(data))
    assert_refused(tmp, patch, BaseMismatchError, "expected BLAKE3", public_key=pub)


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.05, 30], ids=["payload-end", "payload-mid",
                                                              "header", "prefix"])
def test_truncated_delta(files, keep):
    tmp, priv, pub = files
    patch, _ = make_patch(tmp, priv)
    data = patch.read_bytes()
    patch.write_bytes(data[:int(len(data) * keep) if keep < 1 else keep])
    assert_refused(tmp, patch, (TruncatedDeltaError, FormatError), public_key=pub)


def test_trailing_bytes_and_bad_magic(files):
    tmp, priv, pub = files
    patch, _ = make_patch(tmp, priv)
    data = patch.read_bytes()
    patch.write_bytes(data + b"x")
    assert_refused(tmp, patch, FormatError, "trailing bytes", public_key=pub)
    patch.write_bytes(b"NOTADLTA" + data[8:])
    assert_refused(tmp, patch, FormatError, "bad magic", public_key=pub)


def test_mix_and_match_chunk_from_another_model(files, tmp_path_factory):
    """One chunk spliced from a validly signed delta of another model is caught by name."""
    tmp, priv, pub = files
    other = tmp_path_factory.mktemp("other")
    rng = np.random.default_rng(9)
    w = weights(rng)
    save_file(w, str(other / "v1.safetensors"))
    w["fc.weight"] += 0.5
    save_file(w, str(other / "v2.safetensors"))
    theirs = Parts(make_patch(other, priv)[0], other / "v1.safetensors")
    patch, _ = make_patch(tmp, priv)
    mine = Parts(patch, tmp / "v1.safetensors")
    m = mine.header.target.manifest
    j, (fi, seg, i, *_rest) = next((j, c) for j, c in enumerate(chunks(m))
                                   if c[1].name == "fc.weight")
    ops = bytearray(mine.ops)
    codec.OP.pack_into(ops, j * codec.OP.size, *theirs.op(j))
    mine.ops, mine.blobs[j] = bytes(ops), theirs.blobs[j]
    mine.write(patch)
    assert_refused(tmp, patch, (ChunkMismatchError, FormatError), "fc.weight#0",
                   public_key=pub)


def test_manifest_with_oversized_claims_is_refused():
    bad = {"format": "hadmc.manifest/1", "model": "m", "version": 1, "created": 0,
           "expires": 0, "chunk_size": 65536, "root": "",
           "files": [{"path": "f", "format": "raw", "size": 10**15, "blake3": "", "segments": []}]}
    with pytest.raises(FormatError, match="file size must be an integer"):
        Manifest.from_bytes(json.dumps(bad).encode())
    with pytest.raises(FormatError, match="not valid JSON"):
        Manifest.from_bytes(b"[" * 100_000)


def test_unsafe_external_paths_are_refused(files):
    tmp, priv, _pub = files
    m = build_manifest(tmp / "v1.safetensors")
    m.files.append(m.files[0].__class__("../../etc/passwd", "raw", 0, m.files[0].blake3, []))
    m.root = m.compute_root()
    with pytest.raises(FormatError, match="unsafe external data location"):
        Manifest.from_bytes(m.to_bytes())
    signed = sign(build_manifest(tmp / "v1.safetensors"), priv)
    assert signed.manifest.files[0].path == "v1.safetensors"


def test_errors_are_delta_errors():
    for e in (BaseMismatchError, ChunkMismatchError, ExpiredError, FormatError, RollbackError,
              SignatureError, TruncatedDeltaError):
        assert issubclass(e, DeltaError)
