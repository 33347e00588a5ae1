"""OpenVINO on the CPU.

The device receives one ONNX file ("onnx-qdq"), the same format as for ONNX Runtime: FP32
layers as they are, INT8 layers behind QuantizeLinear/DequantizeLinear pairs with INT8
weight initializers, written by NNCF's post-training quantization for the CPU target.
OpenVINO reads the ONNX file directly (``Core.read_model``) and turns each pair into a
FakeQuantize that its CPU plugin fuses into INT8 kernels; layers without one run in FP32.
One file also keeps the tensor-aware delta engine and the manifests as they are (they work
on ONNX initializers), and the file runs on ONNX Runtime too.

Compiled for latency: performance hint LATENCY (one stream), ``threads`` inference threads
(all CPUs when None) and inference precision pinned to f32. Without the pin, OpenVINO runs
floating-point layers in bf16 or fp16 on CPUs that have those instructions (AMX, AVX-512
FP16), which would make an "fp32" layer's latency and accuracy those of a 16-bit one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_core.backends.base import Backend, Session, Shape, default_threads
from hadmc_core.backends.onnxruntime import FUSED_AFTER, graph_input_names
from hadmc_core.backends.postprocess import network_only
from hadmc_core.fsutil import atomic_path

log = logging.getLogger(__name__)
#: OpenVINO runtime precisions as the report names them.
PRECISIONS = {"i8": "int8", "u8": "int8", "f32": "fp32", "bf16": "bf16", "f16": "fp16",
              "u4": "int4", "i4": "int4"}
#: Runtime layer types that carry a Conv/Gemm/MatMul node's weights.
WEIGHT_LAYERS = {"Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution"}


def compile_config(threads: int | None = None, *, profiling: bool = False) -> dict[Any, Any]:
    """The one set of OpenVINO CPU compile properties (see the module docstring)."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    cfg: dict[Any, Any] = {hints.performance_mode: hints.PerformanceMode.LATENCY,
                           props.inference_num_threads: default_threads(threads),
                           hints.inference_precision: ov.Type.f32,
                           # no dynamic INT8 quantization of activations for layers with
                           # compressed (INT4) weights, which OpenVINO turns on by itself on
                           # CPUs with VNNI/AMX: "int4 weights, fp32 compute" stays true
                           "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
    if profiling:
        cfg[props.enable_profiling] = True
    return cfg


class OvSession(Session):
    """A compiled OpenVINO model and one infer request; ``compiled`` is the CompiledModel."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.input_names = [_name(p, f"input{i}") for i, p in enumerate(compiled.inputs)]
        self.input_shapes = [_dims(p.get_partial_shape()) for p in compiled.inputs]
        self.input_dtypes = [np.dtype(p.get_element_type().to_dtype()) for p in compiled.inputs]
        self.output_names = [_name(p, f"output{i}") for i, p in enumerate(compiled.outputs)]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = self.request.infer(feeds)  # copies the outputs (share_outputs=False)
        return [np.asarray(res[p]) for p in self.compiled.outputs]


def _name(port: Any, default: str) -> str:
    try:
        return str(port.get_any_name())
    except RuntimeError:  # a port without a tensor name
        return default


def _dims(shape: Any) -> Shape:
    if shape.rank.is_dynamic:
        return ()
    return tuple(d.get_length() if d.is_static else None for d in shape)


class OpenVinoBackend(Backend):
    """OpenVINO, CPU plugin. Artifact: one ONNX file with QDQ INT8 nodes (from NNCF)."""

    name = "openvino"
    artifact_format = "onnx-qdq"

    def __init__(self) -> None:
        self._core: Any = None

    def available(self) -> bool:
        return find_spec("openvino") is not None

    def core(self) -> Any:
        if self._core is None:
            import openvino as ov

            self._core = ov.Core()
        return self._core

    def compile(self, model: Path | bytes, threads: int | None = None, *,
                batch: int | None = None, profiling: bool = False) -> Any:
        """``Core.read_model`` of the ONNX model, an open batch dim fixed to ``batch``,
        compiled for the CPU with ``compile_config``."""
        import openvino as ov

        core = self.core()
        m = core.read_model(model if isinstance(model, bytes) else str(model))
        if batch is not None:
            shapes = {}
            for port in m.inputs:
                ps = port.get_partial_shape()
                if ps.rank.is_static and len(ps) and ps[0].is_dynamic:
                    shapes[port] = ov.PartialShape([ov.Dimension(batch), *list(ps)[1:]])
            if shapes:
                m.reshape(shapes)
        return core.compile_model(m, "CPU", compile_config(threads, profiling=profiling))

    def open(self, path: Path | bytes, threads: int | None = None, *,
             batch: int | None = None) -> OvSession:
        return OvSession(self.compile(path, threads, batch=batch))

    def executed_precisions(self, path: Path, threads: int | None = None) -> dict[str, str]:
        """What each Conv/Gemm/MatMul node of the ONNX model really runs in once compiled
        ("int8", "fp32", ...), from the runtime model's layer precisions. Cloud side."""
        origin = _weight_origins(path, self.compile(path, threads, batch=1))
        return {node: PRECISIONS.get(precision, precision)
                for node, precision in origin.values()}

    def profile_nodes(self, path: Path, threads: int, runs: int = 150, warmup: int = 20
                      ) -> dict[str, float]:
        """From OpenVINO's per-layer performance counters (``enable_profiling``): each
        executed weight layer's real time goes to the Conv/Gemm/MatMul ONNX node it was
        built from (traced through the runtime model's ``originalLayersNames``); the
        median over ``runs``. Cloud side (reads the graph with ``onnx``)."""
        compiled = self.compile(path, threads, batch=1, profiling=True)
        origin = _weight_origins(path, compiled)
        sess = OvSession(compiled)
        feeds = sess.example_feeds(seed=1)
        for _ in range(warmup):
            sess.run(feeds)
        times: dict[str, list[float]] = {}
        for _ in range(runs):
            sess.run(feeds)
            this_run: dict[str, float] = {}
            for info in sess.request.get_profiling_info():
                if info.node_name in origin:
                    node = origin[info.node_name][0]
                    ms = info.real_time.total_seconds() * 1e3
                    this_run[node] = this_run.get(node, 0.0) + ms
            for n, ms in this_run.items():
                times.setdefault(n, []).append(ms)
        return {n: statistics.median(v) for n, v in times.items()}

    @network_only
    def quantize_int8(self, fp32_path: Path, out_path: Path, calib_x: np.ndarray, *,
                      keep_fp32: Sequence[str] = (), per_channel: bool = True,
                      reduce_range: bool = False) -> Path:
        """NNCF post-training quantization of the ONNX graph for the CPU target (min-max
        ranges, fast bias correction), one calibration sample per call, ``keep_fp32``
        as NNCF's ignored scope (names absent from the graph are ignored, as ONNX
        Runtime's quantizer does). ``reduce_range`` turns on NNCF's overflow fix (7-bit
        weights) for CPUs without an INT8 dot-product instruction."""
        import nncf
        import onnx
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            OverflowFix,
            QuantizationParameters,
        )

        out_path = Path(out_path)
        name = graph_input_names(fp32_path)[0]
        samples = [np.ascontiguousarray(calib_x[i:i + 1]) for i in range(len(calib_x))]
        if not samples:
            raise ValueError("quantize_int8 needs at least one calibration sample")
        advanced = AdvancedQuantizationParameters(
            overflow_fix=OverflowFix.ENABLE if reduce_range else OverflowFix.DISABLE,
            weights_quantization_params=(None if per_channel
                                         else QuantizationParameters(per_channel=False)))
        with quiet_nncf(), contextlib.redirect_stdout(io.StringIO()):  # progress bars
            model = nncf.quantize(
                onnx.load(str(fp32_path)), nncf.Dataset(samples, lambda a: {name: a}),
                subset_size=len(samples), target_device=nncf.TargetDevice.CPU,
                ignored_scope=nncf.IgnoredScope(names=list(keep_fp32), validate=False),
                advanced_parameters=advanced)
        with atomic_path(out_path) as target:
            onnx.save(model, str(target))
        return out_path


class quiet_nncf:  # noqa: N801 - used as a context manager
    """NNCF logs each step at INFO with progress bars; keep warnings and errors."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("nncf")
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def _weight_origins(path: Path, compiled: Any) -> dict[str, tuple[str, str]]:
    """Runtime weight layer name -> (the ONNX Conv/Gemm/MatMul/MatMulNBits node it runs,
    precision: ``u4`` for a MatMulNBits layer whose 4-bit weights the kernel unpacks).

    OpenVINO names a layer after an op it was fused from: the ONNX node's name, that name
    plus a suffix (``/WithoutBiases``, ``/DequantizationMultiply``), or the graph output's
    tensor name for the last layer; a layer fused from two weight nodes is left out.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weight = {n.name for n in graph.node
              if n.op_type in ("Conv", "Gemm", "MatMul", "MatMulNBits")}
    producer = {o: n for n in graph.node for o in n.output}
    by_name = {n.name: n for n in graph.node if n.name}

    def node_of(name: str) -> str | None:
        cut = name
        while cut:
            if cut in weight:
                return cut
            cut = cut.rpartition("/")[0]
        node = producer.get(name) or by_name.get(name)  # a tensor's or a node's name
        while node is not None and node.name not in weight and node.op_type in FUSED_AFTER:
            node = producer.get(node.input[0])
        return node.name if node is not None and node.name in weight else None

    out = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) not in WEIGHT_LAYERS:
            continue
        names = info["originalLayersNames"].astype(str).split(",") \
            if "originalLayersNames" in info else [op.get_friendly_name()]
        nodes = {n for n in map(node_of, names) if n is not None}
        if len(nodes) == 1:
            out[op.get_friendly_name()] = (nodes.pop(), info["runtimePrecision"].astype(str))
    return out
