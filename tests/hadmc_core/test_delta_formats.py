"""Delta formats: ONNX (inside and external data), pruned shapes, raw files, device manifests."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from hadmc_core.delta import (
    BaseMismatchError,
    apply_delta,
    build_manifest,
    codec,
    diff,
    diff_from_manifest,
)


def _onnx(path, weights, external=None):
    import onnx
    from onnx import helper, numpy_helper

    names = sorted(weights)
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", n],
                              ["y" if i == len(names) - 1 else f"h{i + 1}"])
             for i, n in enumerate(names)]
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 32])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 32])],
                          [numpy_helper.from_array(weights[n], n) for n in names])
    model = helper.make_model(g)
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=external, size_threshold=0)
    else:
        onnx.save(model, str(path))


def _pair(rng):
    w = {f"w{i}": rng.standard_normal((32, 32)).astype(np.float32) for i in range(3)}
    w2 = {k: v + (rng.standard_normal(v.shape).astype(np.float32) * 1e-3 if k == "w1" else 0)
          for k, v in w.items()}
    return w, w2


@pytest.mark.parametrize("external", [None, "weights.bin"], ids=["inside", "external-data"])
def test_onnx_round_trip(tmp_path, external):
    rng = np.random.default_rng(0)
    w1, w2 = _pair(rng)
    for d, w in (("a", w1), ("b", w2)):
        (tmp_path / d).mkdir()
        _onnx(tmp_path / d / "m.onnx", w, external)
    m = build_manifest(tmp_path / "b" / "m.onnx")
    tensor_file = m.files[-1]
    assert tensor_file.format == ("onnx-external" if external else "onnx")
    assert [len(m.files), tensor_file.path] == ([2, external] if external else [1, "m.onnx"])
    seg = next(s for s in tensor_file.segments if s.name == "w1")
    assert seg.dtype == "float32" and seg.shape == [32, 32]
    data, stats = diff(tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx")
    assert stats.ops.get("xor", 0) + stats.ops.get("sub", 0) >= 1 and stats.ops["ref"] >= 2
    (tmp_path / "p").write_bytes(data)
    apply_delta(tmp_path / "a" / "m.onnx", tmp_path / "p", tmp_path / "c" / "m.onnx")
    for name in ["m.onnx", *([external] if external else [])]:
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_onnx_external_base_file_checked(tmp_path):
    rng = np.random.default_rng(0)
    w1, w2 = _pair(rng)
    for d, w in (("a", w1), ("b", w2)):
        (tmp_path / d).mkdir()
        _onnx(tmp_path / d / "m.onnx", w, "weights.bin")
    data, _ = diff(tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx")
    (tmp_path / "p").write_bytes(data)
    (tmp_path / "a" / "weights.bin").write_bytes((tmp_path / "b" / "weights.bin").read_bytes())
    with pytest.raises(BaseMismatchError, match="weights.bin"):
        apply_delta(tmp_path / "a" / "m.onnx", tmp_path / "p", tmp_path / "c" / "m.onnx")
    assert not (tmp_path / "c" / "m.onnx").exists()
    assert not (tmp_path / "c" / "weights.bin").exists()


def test_pruned_tensors_are_gathered_from_the_base(tmp_path):
    rng = np.random.default_rng(2)
    w = {"conv.weight": rng.standard_normal((64, 48, 3, 3)).astype(np.float32),
         "bn.running_mean": rng.standard_normal(64).astype(np.float32),
         "fc.weight": rng.standard_normal((10, 64)).astype(np.float32)}
    keep_out = np.sort(rng.choice(64, 40, replace=False))
    keep_in = np.sort(rng.choice(48, 30, replace=False))
    p = {"conv.weight": np.ascontiguousarray(w["conv.weight"][keep_out][:, keep_in]),
         "bn.running_mean": w["bn.running_mean"][keep_out],
         "fc.weight": np.ascontiguousarray(w["fc.weight"][:, keep_out])}
    # value matching finds the kept channels; a pruned-then-fine-tuned tensor would
    # fall back to raw chunks (still exact)
    save_file(w, str(tmp_path / "a.safetensors"))
    save_file(p, str(tmp_path / "b.safetensors"))
    data, stats = diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert sum(v for k, v in stats.ops.items() if k.endswith("-gather")) >= 3
    assert stats.delta_bytes < 0.25 * stats.full_zstd_bytes
    (tmp_path / "p").write_bytes(data)
    apply_delta(tmp_path / "a.safetensors", tmp_path / "p", tmp_path / "c.safetensors")
    assert (tmp_path / "c.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_unrelated_raw_file_falls_back_to_full(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "a.bin").write_bytes(rng.bytes(200_000))
    (tmp_path / "b.bin").write_bytes(rng.bytes(150_000) + b"\0" * 50_000)
    data, stats = diff(tmp_path / "a.bin", tmp_path / "b.bin")
    assert stats.fallback and stats.ops == {"full": 1}
    assert stats.delta_bytes <= stats.full_zstd_bytes + 2048
    (tmp_path / "p").write_bytes(data)
    apply_delta(tmp_path / "a.bin", tmp_path / "p", tmp_path / "c.bin")
    assert (tmp_path / "c.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_moved_and_renamed_tensor_is_a_reference(tmp_path):
    rng = np.random.default_rng(3)
    a = {"x": rng.standard_normal(40_000).astype(np.float32),
         "y": rng.standard_normal(40_000).astype(np.float32)}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file({"renamed": a["x"], "z": rng.standard_normal(100).astype(np.float32)},
              str(tmp_path / "b.safetensors"))
    device = build_manifest(tmp_path / "a.safetensors")
    data, stats = diff_from_manifest(device, tmp_path / "b.safetensors")
    assert stats.ops["ref"] == 3 and "xor" not in stats.ops
    (tmp_path / "p").write_bytes(data)
    apply_delta(tmp_path / "a.safetensors", tmp_path / "p", tmp_path / "c.safetensors")
    assert (tmp_path / "c.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
def test_codecs_round_trip(itemsize):
    rng = np.random.default_rng(itemsize)
    old = rng.bytes(4099)
    new = bytearray(old)
    for i in range(0, 4099, 7):
        new[i] = (new[i] + 1) % 256
    new = bytes(new)
    for kind in (codec.RAW, codec.RAWP, codec.XOR, codec.SUB, codec.SPARSE, codec.DICT):
        blob = codec.encode(kind, new, old, itemsize, 3)
        assert codec.decode(kind, blob, old, itemsize, len(new), "t#0") == new, kind
