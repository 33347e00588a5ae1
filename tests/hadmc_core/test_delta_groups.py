"""Group frames (HDMCDLT3): small changed tensors share one frame; hostile group layouts fail."""

import io

import numpy as np
import pytest
from safetensors.numpy import save_file

from hadmc_core.delta import (
    ChunkMismatchError,
    FormatError,
    apply_delta,
    build_manifest,
    codec,
    diff,
    read_body,
    read_prefix,
)


@pytest.fixture
def bn_pair(tmp_path):
    """Many small tensors that all drift (BatchNorm statistics), big ones unchanged."""
    rng = np.random.default_rng(3)
    w = {f"l{i}.weight": rng.standard_normal((64, 64, 3, 3)).astype(np.float32) * 0.05
         for i in range(4)}
    w |= {f"l{i}.running_var": rng.random(64).astype(np.float32) + 0.5 for i in range(40)}
    save_file(w, str(tmp_path / "a.safetensors"))
    for i in range(40):
        w[f"l{i}.running_var"] = (w[f"l{i}.running_var"] * (
            1 + rng.standard_normal(64).astype(np.float32) * 0.01)).astype(np.float32)
    save_file(w, str(tmp_path / "b.safetensors"))
    return tmp_path


def _ops(data: bytes, base):
    f = io.BytesIO(data)
    files, cs = read_prefix(f)
    dict_bytes = build_manifest(base, chunk_size=cs, name=files[0].path).normalized()
    header, ops = read_body(f, files, dict_bytes)
    return header, dict_bytes, ops, f.read()


def _kinds(ops: bytes) -> list[tuple[int, int, int]]:
    return [codec.OP.unpack_from(ops, j) for j in range(0, len(ops), codec.OP.size)]


def test_small_changed_tensors_share_one_frame(bn_pair):
    data, stats = diff(bn_pair / "a.safetensors", bn_pair / "b.safetensors")
    _h, _d, ops, _payload = _ops(data, bn_pair / "a.safetensors")
    rows = _kinds(ops)
    grouped = [r for r in rows if r[0] & ~(codec.CONT | codec.GATHER) in codec.GROUPED]
    assert len(grouped) == 40 and sum(1 for r in grouped if r[2]) == 1, "one frame for all"
    assert all(r[2] == 0 for r in grouped if r[0] & codec.CONT)
    (bn_pair / "p").write_bytes(data)
    apply_delta(bn_pair / "a.safetensors", bn_pair / "p", bn_pair / "c.safetensors")
    assert (bn_pair / "c.safetensors").read_bytes() == (bn_pair / "b.safetensors").read_bytes()
    assert stats.header_bytes < len(data)


def _rewrite(tmp, data, ops, payload, name="bad"):
    header, dict_bytes, _old, _p = _ops(data, tmp / "a.safetensors")
    (tmp / name).write_bytes(header.to_bytes(bytes(ops), dict_bytes) + payload)
    return tmp / name


@pytest.mark.parametrize("attack", ["cont-first", "cont-with-payload", "opener-dropped"])
def test_hostile_group_layouts_are_refused(bn_pair, attack):
    data, _ = diff(bn_pair / "a.safetensors", bn_pair / "b.safetensors")
    _h, _d, ops, payload = _ops(data, bn_pair / "a.safetensors")
    rows = _kinds(ops)
    opener = next(j for j, r in enumerate(rows)
                  if r[0] & ~(codec.CONT | codec.GATHER) in codec.GROUPED)
    kind, off, length = rows[opener]
    table = bytearray(ops)
    if attack == "cont-first":
        codec.OP.pack_into(table, opener * codec.OP.size, kind | codec.CONT, off, length)
    elif attack == "cont-with-payload":
        j = next(j for j, r in enumerate(rows) if r[0] & codec.CONT)
        codec.OP.pack_into(table, j * codec.OP.size, rows[j][0], rows[j][1], 5)
        payload += b"\0" * 5
    else:  # the frame is opened one chunk later: it decodes to fewer bytes than it holds
        nxt = next(j for j, r in enumerate(rows) if j > opener and r[0] & codec.CONT)
        codec.OP.pack_into(table, opener * codec.OP.size, codec.RAW, 0, 0)
        codec.OP.pack_into(table, nxt * codec.OP.size, rows[nxt][0] & ~codec.CONT,
                           rows[nxt][1], length)
    bad = _rewrite(bn_pair, data, table, payload)
    with pytest.raises((FormatError, ChunkMismatchError)):
        apply_delta(bn_pair / "a.safetensors", bad, bn_pair / "out")
    assert not (bn_pair / "out").exists()


@pytest.mark.parametrize("xz", [False, True], ids=["zstd", "xz"])
def test_group_frames_round_trip_and_detect_corruption(xz):
    rng = np.random.default_rng(1)
    data = (rng.integers(0, 3, 200_000) * (rng.random(200_000) < 0.1)).astype(np.uint8)
    data = data.tobytes()
    blob = codec.compress_group(data, (19,), xz)
    assert blob.startswith(codec.XZ_MAGIC) == xz, "xz wins on sparse small residuals"
    assert codec.decompress_group(blob, len(data), "t#0") == data
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0x10
    with pytest.raises(ChunkMismatchError, match="t#0"):
        codec.decompress_group(bytes(bad), len(data), "t#0")
    with pytest.raises(ChunkMismatchError, match="t#0"):
        codec.decompress_group(blob, len(data) - 1, "t#0")


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
def test_sparse_residual_round_trip_and_is_small(itemsize):
    rng = np.random.default_rng(itemsize)
    old = rng.integers(0, 255, 8192 * itemsize + 3, dtype=np.uint8)
    new = old.copy()
    words = new[:8192 * itemsize].view(codec.UINT[itemsize])
    words[::13] += 1
    words[5::97] -= 1
    words[7:8] += codec.UINT[itemsize](1 << (8 * itemsize - 1))  # |d| = 2^(bits-1): wraps
    old_b, new_b = old.tobytes(), new.tobytes()
    for kind in (codec.SPARSE, codec.SPARSE | codec.GATHER):
        blob = codec.encode(kind, new_b, old_b, itemsize, 3)
        assert codec.decode(kind, blob, old_b, itemsize, len(new_b), "t#0") == new_b
    sub = codec.encode(codec.SUB, new_b, old_b, itemsize, 3)
    assert len(codec.encode(codec.SPARSE, new_b, old_b, itemsize, 3)) < len(sub)
