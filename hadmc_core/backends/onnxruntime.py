"""ONNX Runtime on the CPU (CPUExecutionProvider).

The device receives one ONNX file ("onnx-qdq"): FP32 layers as they are, INT8 layers as
QuantizeLinear/DequantizeLinear pairs around them with INT8 weight initializers, written by
ONNX Runtime's static quantizer. ONNX Runtime fuses each pair into an integer kernel
(QLinearConv, an integer MatMul) when it opens the file.

``session_options`` is the project's one set of ONNX Runtime session options.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_core.backends.base import Backend, Session, Shape, default_threads
from hadmc_core.backends.postprocess import network_only
from hadmc_core.fsutil import atomic_path

#: Distributions that install the ``onnxruntime`` module.
DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino",
                 "onnxruntime-directml", "onnxruntime-qnn")
#: ONNX element types as numpy dtypes (``tensor(float)`` ...).
ORT_DTYPES = {"float": np.float32, "double": np.float64, "float16": np.float16,
              "int8": np.int8, "uint8": np.uint8, "int32": np.int32, "int64": np.int64,
              "bool": np.bool_}
#: Ops a weight node's kernel may absorb when ONNX Runtime fuses (traced back in profiles).
FUSED_AFTER = ("Relu", "Clip", "Add", "BatchNormalization")


def session_options(threads: int | None = None, *, profile_prefix: str | None = None) -> Any:
    """``threads`` intra-op threads (all CPUs when None), one inter-op thread, every graph
    optimization, warnings and errors only; profiling to ``profile_prefix`` when given."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = default_threads(threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return opts


def inference_session(model: Path | bytes, threads: int | None = None, *,
                      profile_prefix: str | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU with ``session_options``."""
    import onnxruntime as ort

    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, session_options(threads, profile_prefix=profile_prefix),
                                providers=["CPUExecutionProvider"])


def graph_input_names(path: Path) -> list[str]:
    """The model's real inputs (not initializers listed as inputs), in order. Cloud side:
    reads the graph with ``onnx``."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in inits]


def _dims(shape: Sequence[Any]) -> Shape:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


class OrtSession(Session):
    """An ONNX Runtime session; ``inner`` is the ``InferenceSession``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        inputs = inner.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.input_shapes = [_dims(i.shape) for i in inputs]
        self.input_dtypes = [np.dtype(ORT_DTYPES.get(i.type[7:-1], np.float32))
                             for i in inputs]
        self.output_names = [o.name for o in inner.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.inner.run(None, feeds))


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime, CPUExecutionProvider. Artifact: one ONNX file with QDQ INT8 nodes."""

    name = "onnxruntime"
    artifact_format = "onnx-qdq"

    def available(self) -> bool:
        return find_spec("onnxruntime") is not None

    def version(self) -> str | None:
        for dist in DISTRIBUTIONS:
            try:
                return version(dist)
            except PackageNotFoundError:
                continue
        return None

    def open(self, path: Path | bytes, threads: int | None = None, *,
             batch: int | None = None) -> OrtSession:
        # ONNX Runtime plans kernels per run; an open batch dim costs nothing to keep.
        return OrtSession(inference_session(path, threads))

    def profile_nodes(self, path: Path, threads: int, runs: int = 150, warmup: int = 20
                      ) -> dict[str, float]:
        """From ONNX Runtime's profiler: fused kernels are traced back to the node they
        replaced (``<name>_token_N`` for integer kernels, ``fused <name>`` for FP32 kernels
        with a fused activation, the output tensor plus ``_nchwc`` for blocked-layout FP32
        convolutions, through a fused Relu/Clip/Add)."""
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        producer = {o: n for n in graph.node for o in n.output}
        names = {n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}

        def origin(event_name: str) -> str | None:
            name = re.sub(r"_token_\d+$", "", event_name.removeprefix("fused "))
            if name in names:
                return name
            node = producer.get(event_name.removesuffix("_nchwc"))
            while node is not None and node.name not in names and node.op_type in FUSED_AFTER:
                node = producer.get(node.input[0])
            return node.name if node is not None and node.name in names else None

        with tempfile.TemporaryDirectory(prefix="hadmc-prof-") as tmp:
            sess = OrtSession(inference_session(path, threads,
                                                profile_prefix=str(Path(tmp) / "p")))
            feeds = sess.example_feeds(seed=1)
            for _ in range(warmup + runs):
                sess.run(feeds)
            events = json.loads(Path(sess.inner.end_profiling()).read_text())
        times: dict[str, list[float]] = {}
        for e in events:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
                continue
            name = origin(e["name"][: -len("_kernel_time")])
            if name is not None:
                times.setdefault(name, []).append(e["dur"] / 1e3)
        return {n: statistics.median(v[warmup:] or v) for n, v in times.items()}

    @network_only
    def quantize_int8(self, fp32_path: Path, out_path: Path, calib_x: np.ndarray, *,
                      keep_fp32: Sequence[str] = (), per_channel: bool = True,
                      reduce_range: bool = False) -> Path:
        """ONNX Runtime's static QDQ quantizer: UINT8 asymmetric activations, INT8
        symmetric weights (per output channel by default), ``keep_fp32`` excluded.
        ``reduce_range`` (7-bit weights) avoids saturation in the u8s8 kernels of CPUs
        without an INT8 dot-product instruction."""
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        name = graph_input_names(fp32_path)[0]
        batches = [{name: np.ascontiguousarray(calib_x[i:i + 32])}
                   for i in range(0, len(calib_x), 32)]

        class Reader:
            def __init__(self) -> None:
                self.i = 0

            def get_next(self) -> dict[str, np.ndarray] | None:
                self.i += 1
                return batches[self.i - 1] if self.i <= len(batches) else None

            def rewind(self) -> None:
                self.i = 0

        out_path = Path(out_path)
        with tempfile.TemporaryDirectory(prefix="hadmc-q-") as tmp, \
                atomic_path(out_path) as target:
            prepped = Path(tmp) / "prep.onnx"
            quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
            quantize_static(
                str(prepped), str(target), Reader(), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=per_channel, reduce_range=reduce_range,
                nodes_to_exclude=list(keep_fp32),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        return out_path
