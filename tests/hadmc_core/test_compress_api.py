"""compress(): its call forms, the graph-only path, where latency comes from, labels that
say what really executes, and bad input refused before anything is written."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch

from hadmc_core.compress import compress
from hadmc_core.config import PipelineConfig
from hadmc_core.errors import HadmcError
from hadmc_core.hal import load_profile
from hadmc_core.hal.feedback import Correction
from hadmc_core.hal.latency import runs_here
from hadmc_core.models import ArchSpec, build_model
from hadmc_core.onnx_io import export_onnx
from hadmc_core.sources import load
from tests.hadmc_core.nets import FAST, ConvNet, EinsumPoolNet, trained

#: quantization only: a second or two per call on digits
QUICK = PipelineConfig.from_dict({**FAST, "prune": {"enabled": False},
                                  "distill": {"enabled": False},
                                  "quantize": {"keep_ladder": [1], "calib_samples": 64,
                                               "sensitivity_samples": 32}})


@pytest.fixture(scope="module")
def convnet(digits):
    return trained(ConvNet(), digits, epochs=3)


def _left_nothing(out):
    return not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_older_call_form_with_an_archspec_second_still_works(digits, tmp_path):
    spec = ArchSpec("resnet18", 1, 10, "small", 0.25)
    seen: list[str] = []
    # the service's worker calls it with seven positional arguments, progress last
    res = compress(build_model(spec), spec, digits, load_profile("x86-avx2"), tmp_path / "o",
                   QUICK, lambda stage, done, total: seen.append(stage))
    assert {"baseline", "q-sensitivity"} <= set(seen)
    assert res.report["arch"] == spec.to_dict()
    assert res.report["model"] == {"kind": "zoo", "name": "resnet18"}
    assert (tmp_path / "o" / "model.onnx").is_file()


def test_graph_only_model_is_quantized_and_reports_skipped_stages(digits, tmp_path):
    net = trained(EinsumPoolNet(), digits, epochs=3)
    path = export_onnx(net, torch.from_numpy(digits.val.x[:2]), tmp_path / "einsum.onnx")
    # weights in a file beside the graph: the artifact still carries them inside
    onnx.save(onnx.load(str(path)), str(path), save_as_external_data=True,
              location="einsum.bin", size_threshold=0)
    loaded = load(str(path))
    assert loaded.module is None  # Einsum does not convert to PyTorch
    cfg = PipelineConfig.from_dict({**FAST, "quantize": {"keep_ladder": [0, 1]},
                                    "constraints": {"max_accuracy_drop": 100.0}})
    rep = compress(loaded, digits, load_profile("x86-avx2"), tmp_path / "out", cfg).report
    skipped = {s["stage"]: s for s in rep["stages"]["skipped"]}
    for stage in ("prune", "distill"):
        assert skipped[stage]["op"] == "Einsum" and skipped[stage]["node"]
        assert "Einsum" in skipped[stage]["reason"]
    assert {"fuse", "quantize"} <= set(rep["stages"]["ran"])
    assert rep["fusion"]["relu"] == "fused by onnxruntime at session creation"
    assert rep["model"]["kind"] == "onnx" and rep["model"]["converted"] is False
    assert rep["arch"] is None and rep["distill_alignment"] == []
    # Layers are the graph's weight nodes; INT8 where the plan says so.
    convs = [r for r in rep["layers"] if r["kind"] == "conv"]
    assert len(convs) == 4 and all(r["layer"] == r["onnx_node"] for r in convs)
    assert {r["precision"] for r in convs} <= {"int8", "fp32"} and \
        any(r["precision"] == "int8" and r["executed_as"] == "int8" for r in convs)
    assert all(r["quant_sensitivity"] is not None for r in convs)
    assert rep["baseline"]["params"] == sum(p.numel() for p in net.parameters()) - 2 * 16 - 4 * 32
    ops = {n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Einsum"} <= ops
    assert rep["compressed"]["size_bytes"] < rep["baseline"]["size_bytes"] / 2


def test_remote_profile_reports_the_estimate_never_the_worker_timing(convnet, digits,
                                                                    tmp_path):
    prof = load_profile("jetson-orin")
    assert not runs_here(prof)
    rep = compress(convnet, digits, prof, tmp_path / "o", QUICK).report
    assert rep["latency_source"] == "estimated" and rep["latency_model"] == "roofline"
    for stats in (rep["baseline"], rep["compressed"], *rep["candidates"]):
        assert stats["measured_on_worker_ms"] > 0
        assert stats["latency_ms"] != stats["measured_on_worker_ms"]
    # The roofline of a few hundred kMACs on a 5 TOPS GPU is dispatch-bound: 5 us a layer.
    assert rep["baseline"]["latency_ms"] == pytest.approx(0.005 * 4, rel=0.2)
    # Kept layers run in FP32 under ONNX Runtime even on an FP16-capable device.
    assert {r["precision"] for r in rep["layers"]} <= {"int8", "fp32"}
    assert {r["executed_as"] for r in rep["layers"]} <= {"int8", "fp32"}


def test_latency_source_follows_the_profile_and_the_device_table(convnet, digits, tmp_path):
    prof = load_profile("x86-avx2")
    rep = compress(convnet, digits, prof, tmp_path / "a", QUICK).report
    if runs_here(prof):
        assert rep["latency_source"] == "measured"
        assert "measured_on_worker_ms" not in rep["compressed"]
    table = {"conv-k3-s1-8x8|fp32": [0.5, 0.0], "conv-k3-s1-8x8|int8": [0.25, 0.0]}
    rep = compress(convnet, digits, prof, tmp_path / "b", QUICK, device_table=table).report
    assert rep["latency_source"] == "device_table" and rep["latency_model"] == "device-table"
    # The 8x8 convolution: the table's 0.5 ms in FP32 (the baseline) dominates the estimate;
    # the three other layers are timed here (tens of microseconds each).
    assert 0.5 <= rep["baseline"]["latency_ms"] < 0.75
    # Its INT8 gain is the table's own difference, 0.5 - 0.25 ms.
    first = next(r for r in rep["layers"] if r["layer"] == "body.0")
    assert first["int8_gain_ms_estimate"] == pytest.approx(0.25)


def test_a_device_tables_correction_scales_the_reported_latency(convnet, digits, tmp_path):
    """A job for a device with a correction from its reported p50s: the estimates are
    the table's times the factor, the report keeps the factor, its pairs' versions and
    each targeted device's own uncorrected estimate (what its next p50 is paired with)."""
    prof = load_profile("x86-avx2")
    table = {"conv-k3-s1-8x8|fp32": [0.5, 0.0], "conv-k3-s1-8x8|int8": [0.25, 0.0]}
    slower = {k: [2 * v[0], v[1]] for k, v in table.items()}
    corr = Correction({"fp32": 2.0, "int8": 2.0}, {"fp32": 2, "int8": 1}, [11, 12, 13])
    rep = compress(convnet, digits, prof, tmp_path / "c", QUICK, device_table=slower,
                   latency_correction=corr, device_tables={"7": table, "9": slower}).report
    assert rep["latency_source"] == "device_table"
    assert rep["latency_model"] == "device-table+p50-correction"
    lc = rep["latency_correction"]
    assert lc["factors"] == {"fp32": 2.0, "int8": 2.0} and lc["versions"] == [11, 12, 13]
    assert lc["source"] == "device table, corrected by 3 reported p50s"
    final = rep["compressed"]
    assert final["latency_ms"] == pytest.approx(2.0 * lc["uncorrected_ms"])
    assert final["uncorrected_ms"] == lc["uncorrected_ms"]
    assert final["table_precision"] in ("fp32", "int8")
    assert final["device_table_ms"]["9"] == pytest.approx(lc["uncorrected_ms"], rel=1e-4)
    assert final["device_table_ms"]["7"] < final["device_table_ms"]["9"]
    # the baseline: the table's 1.0 ms FP32 convolution dominates, doubled
    assert 2.0 <= rep["baseline"]["latency_ms"] < 3.0
    assert rep["baseline"]["device_table_ms"]["7"] < rep["baseline"]["device_table_ms"]["9"]


@pytest.mark.parametrize("case", ["width", "channels"])
def test_a_model_that_does_not_fit_the_data_is_one_clear_error(case, digits, tmp_path):
    model = ConvNet(classes=5) if case == "width" else copy.deepcopy(ConvNet())
    if case == "channels":
        model.body[0] = torch.nn.Conv2d(3, 16, 3, padding=1)
    out = tmp_path / "out"
    expected = ("labels go up to 9 but the model has 5 classes" if case == "width"
                else "does not run on the dataset's inputs")
    with pytest.raises(HadmcError, match=expected):
        compress(model, digits, load_profile("x86-avx2"), out, QUICK)
    assert _left_nothing(out)


def test_graph_only_model_with_another_input_size_is_refused(digits, tmp_path):
    net = EinsumPoolNet().eval()
    path = export_onnx(net, torch.zeros(2, 1, 12, 12), tmp_path / "m12.onnx")
    m = onnx.load(str(path))
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim[2:], (12, 12), strict=True):
        d.dim_value = v
    onnx.save(m, str(path))
    loaded = load(str(path))
    assert loaded.module is None and loaded.input_shape == (1, 12, 12)
    with pytest.raises(HadmcError, match=r"inputs are \(1, 8, 8\) but m12 takes \(1, 12, 12\)"):
        compress(loaded, digits, load_profile("x86-avx2"), tmp_path / "out", QUICK)
    assert _left_nothing(tmp_path / "out")
