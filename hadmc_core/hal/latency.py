"""Per-layer latency model: measured on this machine, roofline for a remote profile.

Each convolution or linear layer has a *geometry* (kind, kernel, stride, input size)
and channel counts. For a geometry and a precision the model holds a line
``ms = a + b * MMACs`` fitted to timings of that single layer at three widths by a
backend (ONNX Runtime here; the lookup table, cached on disk per CPU, ORT version and
thread count).
A device's own measured table (same key format, sent by the edge agent) overrides
both; it may carry the device's whole-model term under ``model|<precision>`` keys
(``[c, k]``, ``hadmc_core.hal.wholeterm``), and come with a correction from the p50s the
device reported for versions predicted from its table (``hadmc_core.hal.feedback``),
which scales its whole-model estimates. Torch-free: the edge agent can build the same
table on the device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hadmc_core import backends
from hadmc_core.backends import Backend
from hadmc_core.fsutil import write_atomic
from hadmc_core.hal.detect import cpu_flags, cpu_model

if TYPE_CHECKING:
    from hadmc_core.hal.feedback import Correction
    from hadmc_core.hal.profile import HardwareProfile

log = logging.getLogger(__name__)
MEASURE_PRECISIONS = ("fp32", "int8")
#: Version of the timing graphs; part of the cache key, so a changed graph re-measures.
TABLE_FORMAT = 2
#: Table keys of a whole-model term (``model|fp32``: ``[c, k]``).
TERM_PREFIX = "model|"
PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}


@dataclass(frozen=True)
class LayerGeom:
    """Shape of one layer, channel counts aside. ``kind``: conv, dwconv or linear."""

    kind: str
    k: int = 1
    stride: int = 1
    h: int = 1
    w: int = 1

    @property
    def key(self) -> str:
        return f"{self.kind}-k{self.k}-s{self.stride}-{self.h}x{self.w}"

    @property
    def out_hw(self) -> tuple[int, int]:
        pad = self.k // 2
        return ((self.h + 2 * pad - self.k) // self.stride + 1,
                (self.w + 2 * pad - self.k) // self.stride + 1)

    def macs(self, cin: int, cout: int) -> int:
        if self.kind == "linear":
            return cin * cout
        oh, ow = self.out_hw
        per_out = self.k * self.k * (1 if self.kind == "dwconv" else cin)
        return oh * ow * cout * per_out

    def params(self, cin: int, cout: int) -> int:
        if self.kind == "linear":
            return cin * cout + cout
        return cout * self.k * self.k * (1 if self.kind == "dwconv" else cin) + cout


def _machine_id(threads: int, backend: Backend | None = None) -> str:
    """The latency cache's key: CPU model, runtime and its version, threads, table format
    (ONNX Runtime's key names only the version, as before other backends existed)."""
    backend = backend or backends.get("onnxruntime")
    runtime = backend.version() if backend.name == "onnxruntime" else \
        f"{backend.name}-{backend.version()}"
    raw = f"{cpu_model()}|{runtime}|{threads}|{TABLE_FORMAT}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class LatencyModel:
    """Estimate per-layer latency in ms for a profile.

    ``measure=True`` times layers on this machine with ``backend`` (use it when the
    profile describes this machine; pass the run's backend); otherwise a roofline from the
    profile's peak throughput and bandwidth. ``table``
    (``{"<geom key>|<precision>": [a, b]}``) from a device overrides both; its
    ``model|<precision>`` entries (``[c, k]``) are the device's whole-model term
    (``model_ms``). ``correction`` (with a table only): the device's factor from the p50s
    it reported (``hadmc_core.hal.feedback``), applied to every whole-model estimate.
    """

    def __init__(self, profile: HardwareProfile, measure: bool = False,
                 table: dict[str, list[float]] | None = None, threads: int | None = None,
                 cache_dir: Path | None = None,
                 backend: str | Backend = "onnxruntime",
                 correction: Correction | None = None) -> None:
        self.profile = profile
        self.measure = measure
        self.threads = threads or profile.threads or os.cpu_count() or 1
        self.backend = backends.resolve(backend)
        self.device_table = {k: list(v) for k, v in (table or {}).items()
                             if not k.startswith(TERM_PREFIX)}
        self._fits: dict[str, list[float]] = {}
        self._graph_fits: dict[str, list[float]] = {}
        #: per precision ``[c, k]``: whole model ms = c + k * (sum of its layers' ms)
        self._overhead: dict[str, list[float]] = {
            k[len(TERM_PREFIX):]: [float(x) for x in v] for k, v in (table or {}).items()
            if k.startswith(TERM_PREFIX) and len(v) in (2, 3)}
        self.correction = correction if self.device_table else None
        self._cache_path: Path | None = None
        if measure:
            from hadmc_core.settings import get_settings

            root = cache_dir or get_settings().cache_dir
            key = _machine_id(self.threads, self.backend)
            self._cache_path = Path(root) / f"latency-{key}.json"
            if self._cache_path.is_file():
                try:
                    self._fits = json.loads(self._cache_path.read_text())
                except (OSError, ValueError):
                    self._fits = {}

    def with_table(self, table: dict[str, list[float]]) -> LatencyModel:
        """A model like this one (profile, layer timing and its fits, shared) with another
        device's table and no correction: that device's own estimate."""
        out = LatencyModel(self.profile, measure=False, table=table, threads=self.threads,
                           backend=self.backend)
        out.measure, out._fits, out._cache_path = self.measure, self._fits, self._cache_path
        return out

    @property
    def source(self) -> str:
        if self.device_table:
            base = "device-table+whole-model-term" if self._overhead else "device-table"
            return f"{base}+p50-correction" if self.correction is not None else base
        if self._graph_fits:
            return f"measured-{self.backend.name}-in-graph"
        return f"measured-{self.backend.name}" if self.measure else "roofline"

    def layer_ms(self, geom: LayerGeom, cin: int, cout: int, precision: str,
                 ref: tuple[int, int] | None = None) -> float:
        key = f"{geom.key}|{precision}"
        mmacs = geom.macs(cin, cout) / 1e6
        if key in self.device_table:
            a, b = self.device_table[key]
            return a + b * mmacs
        if key in self._graph_fits:
            a, b = self._graph_fits[key]
            return a + b * mmacs
        if self.measure and precision in MEASURE_PRECISIONS:
            if key not in self._fits:
                self._fits[key] = self._fit(geom, precision, ref or (cin, cout))
                self._save()
            a, b = self._fits[key]
            return a + b * mmacs
        return self._roofline(geom, cin, cout, precision)

    def fit_in_graph(self, samples: list[tuple[LayerGeom, int, int, str, float]]) -> int:
        """Fit ``ms = a + b * MMACs`` per geometry and precision to layer times measured
        inside whole models (``profile_nodes``); these fits then take precedence over the
        single-layer ones. Returns how many geometry/precision keys were fitted."""
        by_key: dict[str, list[tuple[float, float]]] = {}
        for geom, cin, cout, precision, ms in samples:
            by_key.setdefault(f"{geom.key}|{precision}", []).append(
                (geom.macs(cin, cout) / 1e6, ms))
        for key, pts in by_key.items():
            self._graph_fits[key] = _fit_line([x for x, _ in pts], [y for _, y in pts])
        return len(by_key)

    def fit_overhead(self, models: list[tuple[str, list[tuple[LayerGeom, int, int]], float]]
                     ) -> int:
        """Fit, per precision, ``whole ms = c + k * sum of the layers' estimates`` to whole
        models timed at one precision (``(precision, [(geom, cin, cout), ...], ms)``):
        what a model costs beyond its weight layers (activations, pooling, additions,
        reorders, quantizing the input, the call itself). Returns precisions fitted."""
        by_p: dict[str, list[tuple[float, float]]] = {}
        for precision, layers, ms in models:
            total = sum(self.layer_ms(g, ci, co, precision) for g, ci, co in layers)
            by_p.setdefault(precision, []).append((total, ms))
        for p, pts in by_p.items():
            self._overhead[p] = _fit_term([x for x, _ in pts], [y for _, y in pts])
        return len(by_p)

    def model_ms(self, layer_ms_by_precision: dict[str, float],
                 fixed_ms_by_precision: dict[str, float] | None = None,
                 corrected: bool = True) -> float:
        """A whole model's estimate from the sums of its layers' estimates per precision:
        each precision's share goes through that precision's term (the share of the layer
        time at it weighs its constant); the plain sum where nothing is fitted.

        A term ``[c, k]``: ``c + k * layers``. A device's term may have a third
        coefficient ``j`` for the layers' constant parts (their ``a``; a one-layer graph's
        constant is mostly the call, which a model pays once): ``c + k * (layers - fixed)
        + j * fixed``, with ``fixed_ms_by_precision`` the sums of the layers' ``a``.

        A device's correction (``correction``) multiplies the result by its factors, each
        precision's weighed by that precision's share of the layer time (a precision
        without a factor: 1); ``corrected=False``: the table's own estimate."""
        ms = self._whole_ms(layer_ms_by_precision, fixed_ms_by_precision)
        total = sum(layer_ms_by_precision.values())
        if not corrected or self.correction is None or total <= 0:
            return ms
        corr = self.correction
        return ms * sum(corr.factor(p) * v for p, v in layer_ms_by_precision.items()) / total

    def _whole_ms(self, layer_ms_by_precision: dict[str, float],
                  fixed_ms_by_precision: dict[str, float] | None) -> float:
        total = sum(layer_ms_by_precision.values())
        if not self._overhead or total <= 0:
            return total
        fixed = fixed_ms_by_precision or {}
        out = 0.0
        for p, ms in layer_ms_by_precision.items():
            term = self._overhead.get(p) or self._overhead.get("fp32") or [0.0, 1.0]
            c, k = term[0], term[1]
            out += c * ms / total + k * ms
            if len(term) > 2:
                out += (term[2] - k) * min(fixed.get(p, 0.0), ms)
        return max(out, MIN_WHOLE_FRACTION * total)

    def fixed_ms(self, geom: LayerGeom, precision: str) -> float:
        """The constant part ``a`` of a layer's line (0 for the roofline)."""
        key = f"{geom.key}|{precision}"
        for fits in (self.device_table, self._graph_fits, self._fits):
            if key in fits:
                return float(fits[key][0])
        return 0.0

    @property
    def overhead(self) -> dict[str, list[float]]:
        """The whole-model term per precision (``[c, k]`` or a device's ``[c, k, j]``;
        empty: the layer sum)."""
        return dict(self._overhead)

    def _roofline(self, geom: LayerGeom, cin: int, cout: int, precision: str) -> float:
        peaks = self.profile.peak_gops
        p = precision if precision in peaks else ("fp32" if "fp32" in peaks else "fp16")
        ops = 2.0 * geom.macs(cin, cout)
        oh, ow = geom.out_hw
        act = (geom.h * geom.w * cin + oh * ow * cout) * PRECISION_BYTES.get(p, 4)
        wbytes = geom.params(cin, cout) * PRECISION_BYTES.get(p, 4)
        compute_s = ops / (self.profile.peak_gops[p] * 1e9)
        memory_s = (act + wbytes) / (self.profile.memory_bandwidth_gbs * 1e9)
        return 1e3 * max(compute_s, memory_s) + 0.005  # 5 us dispatch per op

    def _fit(self, geom: LayerGeom, precision: str, ref: tuple[int, int]) -> list[float]:
        return fit_layer(geom, precision, ref, self.threads, backend=self.backend)

    def _save(self) -> None:
        if self._cache_path is None:
            return
        try:
            self._cache_path.parent.mkdir(parents=True, exist_ok=True)
            data = json.dumps(self._fits, indent=0, sort_keys=True).encode()
            write_atomic(self._cache_path, data, mode=0o666)
        except OSError as e:  # a read-only cache only costs time
            log.warning("latency cache not saved: %s", e)

    def table(self) -> dict[str, list[float]]:
        """The fitted coefficients, in the format a device table uses."""
        return {**self._fits, **self.device_table,
                **{f"{TERM_PREFIX}{p}": v for p, v in self._overhead.items()}}


def fit_layer(geom: LayerGeom, precision: str, ref: tuple[int, int],
              threads: int, backend: str | Backend = "onnxruntime") -> list[float]:
    """Time the layer at three widths in ``backend`` and fit ms = a + b * MMACs (a, b >= 0)."""
    cin, cout = ref
    xs, ys = [], []
    for frac in (1.0, 0.5, 0.25):
        ci = cin if (geom.kind == "conv" and cin <= 4) else max(1, int(cin * frac))
        co = cout if geom.kind == "linear" else max(1, int(cout * frac))
        if geom.kind == "dwconv":
            ci = co
        xs.append(geom.macs(ci, co) / 1e6)
        ys.append(time_layer(geom, ci, co, precision, threads, backend=backend))
    return _fit_line(xs, ys)


#: A whole-model estimate is at least this fraction of its layers' sum: a term fitted with
#: a negative constant (``_fit_term``) never takes a small model below it.
MIN_WHOLE_FRACTION = 0.25


def _fit_term(xs: list[float], ys: list[float]) -> list[float]:
    """``[c, k]`` of ``whole = c + k * layer sum``, least squares, ``k >= 0``. Unlike a
    layer's line the constant may be negative: the layer times come from the runtime's
    profiler, which adds its own cost to every node it times, so a model of many small
    nodes (MobileNetV2: depthwise and 1x1 convolutions of microseconds each) runs in less
    than the sum of its profiled layers; the negative constant is that per-node cost, the
    same for every candidate of one architecture. Clipping it to zero kept the slope of
    the unclipped line and predicted such models up to twice their time."""
    if len(set(xs)) < 2:  # one size only: a ratio through the origin
        return [0.0, float(np.median(ys)) / max(xs[0], 1e-9)]
    k, c = (float(v) for v in np.polyfit(xs, ys, 1))
    if k < 0:  # whole times that do not grow with the layers: their mean
        return [float(np.mean(ys)), 0.0]
    return [c, k]


def _fit_line(xs: list[float], ys: list[float]) -> list[float]:
    """``[a, b]`` of ``y = a + b * x`` with a, b >= 0 (robust intercept: median residual)."""
    if len(set(xs)) > 1:
        b = max(0.0, float(np.polyfit(xs, ys, 1)[0]))
    else:  # one size only: a line through the origin
        b = float(np.median(ys)) / max(xs[0], 1e-9)
    a = max(0.0, float(np.median([y - b * x for x, y in zip(xs, ys, strict=True)])))
    return [a, b]


def describe(geom: LayerGeom, cin: int, cout: int) -> dict:
    return {**asdict(geom), "cin": cin, "cout": cout, "macs": geom.macs(cin, cout)}


def _layer_onnx(geom: LayerGeom, cin: int, cout: int, precision: str) -> bytes:
    """A one-layer ONNX model as the pipeline's exported graphs run it.

    FP32: Conv (or MatMul) + Relu, which ORT fuses. INT8: the QDQ pattern ORT's static
    quantizer writes for a folded Conv+ReLU, i.e. uint8 input, int8 weights, an int32
    bias and an output QuantizeLinear with zero point 0 that absorbs the ReLU, so ORT
    fuses it into one QLinearConv (MatMul: an integer MatMul) exactly as in the model.
    Written as protobuf bytes directly (no ``onnx`` package), so a device can build it."""
    from hadmc_core.hal import onnxwrite as ow

    rng = np.random.default_rng(0)
    dw = geom.kind == "dwconv"
    if geom.kind == "linear":
        wshape, xshape, op = [cin, cout], [1, cin], "MatMul"
    else:
        wshape = [cout, 1 if dw else cin, geom.k, geom.k]
        xshape, op = [1, cin, geom.h, geom.w], "Conv"
    w = rng.standard_normal(wshape).astype(np.float32) * 0.05
    inits, nodes = [], []
    x_name, w_name, b_name = "x", "w", "b"
    if precision == "int8":
        sx, sw = 0.05, 0.002
        inits += [ow.tensor("sx", np.array(sx, np.float32)),
                  ow.tensor("zx", np.array(128, np.uint8)),
                  ow.tensor("zy", np.array(0, np.uint8)),
                  ow.tensor("wq", (w / sw).clip(-127, 127).astype(np.int8)),
                  ow.tensor("sw", np.array(sw, np.float32)),
                  ow.tensor("zw", np.array(0, np.int8))]
        nodes += [ow.node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
                  ow.node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
                  ow.node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"])]
        x_name, w_name = "xd", "wd"
        if op == "Conv":
            inits += [ow.tensor("bq", np.zeros(cout, np.int32)),
                      ow.tensor("sb", np.array(sx * sw, np.float32)),
                      ow.tensor("zb", np.array(0, np.int32))]
            nodes.append(ow.node("DequantizeLinear", ["bq", "sb", "zb"], ["bd"]))
            b_name = "bd"
    else:
        inits.append(ow.tensor("w", w))
        if op == "Conv":
            inits.append(ow.tensor("b", np.zeros(cout, np.float32)))
    if op == "Conv":
        nodes.append(ow.node("Conv", [x_name, w_name, b_name], ["y"],
                             kernel_shape=[geom.k] * 2, strides=[geom.stride] * 2,
                             pads=[geom.k // 2] * 4, group=cin if dw else 1))
    else:
        nodes.append(ow.node("MatMul", [x_name, w_name], ["y"]))
    if precision == "int8":
        nodes += [ow.node("QuantizeLinear", ["y", "sx", "zy"], ["yq"]),
                  ow.node("DequantizeLinear", ["yq", "sx", "zy"], ["out"])]
        out = "out"
    else:
        nodes.append(ow.node("Relu", ["y"], ["out"]))
        out = "out"
    return ow.model(nodes, [ow.value_info("x", xshape)], [ow.value_info(out)], inits,
                    name="layer")


def time_layer(geom: LayerGeom, cin: int, cout: int, precision: str, threads: int,
               min_runs: int = 15, min_seconds: float = 0.02,
               backend: str | Backend = "onnxruntime") -> float:
    """Median wall-clock ms of one layer at batch 1 in ``backend`` (ONNX Runtime unless
    named): 3 warm-up runs, then at least ``min_runs`` runs and ``min_seconds`` (at most
    200 runs)."""
    sess = backends.resolve(backend).open(_layer_onnx(geom, cin, cout, precision), threads,
                                          batch=1)
    shape = [1, cin] if geom.kind == "linear" else [1, cin, geom.h, geom.w]
    feeds = {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    return backends.time_runs(lambda: sess.run(feeds), min_runs, 3, min_seconds, threads,
                              max_runs=200).median_ms


def profile_nodes(path: Path, threads: int, runs: int = 150, warmup: int = 20
                  ) -> dict[str, float]:
    """Median kernel ms of every Conv/Gemm/MatMul node as ONNX Runtime runs the model
    (``hadmc_core.backends.get("onnxruntime").profile_nodes``)."""
    return backends.get("onnxruntime").profile_nodes(path, threads, runs, warmup)


def runs_here(profile: HardwareProfile) -> bool:
    """True when the profile describes a CPU like this one, so layers can be timed here."""
    isa = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
    if profile.accelerator != "cpu" or isa.get(platform.machine().lower()) != profile.isa:
        return False
    return {f.lower() for f in profile.flags} <= cpu_flags()
