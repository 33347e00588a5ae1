"""Per-layer latency model: measured on this machine, roofline for a remote profile.

Each convolution or linear layer has a *geometry* (kind, kernel, stride, input size)
and channel counts. For a geometry and a precision the model holds a line
``ms = a + b * MMACs`` fitted to ONNX Runtime timings of that single layer at three
widths (the lookup table, cached on disk per CPU, ORT version and thread count).
A device's own measured table (same key format, sent by the edge agent) overrides
both. Torch-free: the edge agent can build the same table on the device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hadmc_core.hal.profile import HardwareProfile

log = logging.getLogger(__name__)
MEASURE_PRECISIONS = ("fp32", "int8")
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


def _machine_id(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime as ort

    raw = f"{cpu}|{ort.__version__}|{threads}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


class LatencyModel:
    """Estimate per-layer latency in ms for a profile.

    ``measure=True`` times layers on this machine with ONNX Runtime (use it when the
    profile describes this machine); otherwise a roofline from the profile's peak
    throughput and bandwidth. ``table`` (``{"<geom key>|<precision>": [a, b]}``) from a
    device overrides both.
    """

    def __init__(self, profile: HardwareProfile, measure: bool = False,
                 table: dict[str, list[float]] | None = None, threads: int | None = None,
                 cache_dir: Path | None = None) -> None:
        self.profile = profile
        self.measure = measure
        self.threads = threads or profile.threads or os.cpu_count() or 1
        self.device_table = dict(table or {})
        self._fits: dict[str, list[float]] = {}
        self._cache_path: Path | None = None
        if measure:
            from hadmc_core.settings import get_settings

            root = cache_dir or get_settings().cache_dir
            self._cache_path = Path(root) / f"latency-{_machine_id(self.threads)}.json"
            if self._cache_path.is_file():
                try:
                    self._fits = json.loads(self._cache_path.read_text())
                except (OSError, ValueError):
                    self._fits = {}

    @property
    def source(self) -> str:
        if self.device_table:
            return "device-table"
        return "measured-onnxruntime" if self.measure else "roofline"

    def layer_ms(self, geom: LayerGeom, cin: int, cout: int, precision: str,
                 ref: tuple[int, int] | None = None) -> float:
        key = f"{geom.key}|{precision}"
        mmacs = geom.macs(cin, cout) / 1e6
        if key in self.device_table:
            a, b = self.device_table[key]
            return a + b * mmacs
        if self.measure and precision in MEASURE_PRECISIONS:
            if key not in self._fits:
                self._fits[key] = self._fit(geom, precision, ref or (cin, cout))
                self._save()
            a, b = self._fits[key]
            return a + b * mmacs
        return self._roofline(geom, cin, cout, precision)

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
        return fit_layer(geom, precision, ref, self.threads)

    def _save(self) -> None:
        if self._cache_path is None:
            return
        try:
            self._cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._fits, indent=0, sort_keys=True))
            os.replace(tmp, self._cache_path)
        except OSError as e:  # a read-only cache only costs time
            log.warning("latency cache not saved: %s", e)

    def table(self) -> dict[str, list[float]]:
        """The fitted coefficients, in the format a device table uses."""
        return {**self._fits, **self.device_table}


def fit_layer(geom: LayerGeom, precision: str, ref: tuple[int, int],
              threads: int) -> list[float]:
    """Time the layer at three widths and fit ms = a + b * MMACs (a, b >= 0)."""
    cin, cout = ref
    xs, ys = [], []
    for frac in (1.0, 0.5, 0.25):
        ci = cin if (geom.kind == "conv" and cin <= 4) else max(1, int(cin * frac))
        co = cout if geom.kind == "linear" else max(1, int(cout * frac))
        if geom.kind == "dwconv":
            ci = co
        xs.append(geom.macs(ci, co) / 1e6)
        ys.append(time_layer(geom, ci, co, precision, threads))
    b, a = np.polyfit(xs, ys, 1) if len(set(xs)) > 1 else (0.0, float(np.median(ys)))
    b = max(0.0, float(b))
    a = max(0.0, float(np.median([y - b * x for x, y in zip(xs, ys, strict=True)])))
    return [a, b]


def describe(geom: LayerGeom, cin: int, cout: int) -> dict:
    return {**asdict(geom), "cin": cin, "cout": cout, "macs": geom.macs(cin, cout)}


def _layer_onnx(geom: LayerGeom, cin: int, cout: int, precision: str) -> bytes:
    """A one-layer ONNX model; INT8 as QDQ so ORT runs QLinearConv / integer MatMul.
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
    x_name, w_name = "x", "w"
    if precision == "int8":
        inits += [ow.tensor("sx", np.array(0.05, np.float32)),
                  ow.tensor("zx", np.array(128, np.uint8)),
                  ow.tensor("wq", (w / 0.002).clip(-127, 127).astype(np.int8)),
                  ow.tensor("sw", np.array(0.002, np.float32)),
                  ow.tensor("zw", np.array(0, np.int8))]
        nodes += [ow.node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
                  ow.node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
                  ow.node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"])]
        x_name, w_name = "xd", "wd"
    else:
        inits.append(ow.tensor("w", w))
    if op == "Conv":
        inits.append(ow.tensor("b", np.zeros(cout, np.float32)))
        nodes.append(ow.node("Conv", [x_name, w_name, "b"], ["y"], kernel_shape=[geom.k] * 2,
                             strides=[geom.stride] * 2, pads=[geom.k // 2] * 4,
                             group=cin if dw else 1))
    else:
        nodes.append(ow.node("MatMul", [x_name, w_name], ["y"]))
    nodes.append(ow.node("Relu", ["y"], ["r"]))
    out = "r"
    if precision == "int8":
        nodes += [ow.node("QuantizeLinear", ["r", "sx", "zx"], ["rq"]),
                  ow.node("DequantizeLinear", ["rq", "sx", "zx"], ["out"])]
        out = "out"
    return ow.model(nodes, [ow.value_info("x", xshape)], [ow.value_info(out)], inits,
                    name="layer")


def time_layer(geom: LayerGeom, cin: int, cout: int, precision: str, threads: int,
               min_runs: int = 15, min_seconds: float = 0.02) -> float:
    """Median wall-clock ms of one layer at batch 1 in ONNX Runtime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(_layer_onnx(geom, cin, cout, precision), opts,
                                providers=["CPUExecutionProvider"])
    shape = [1, cin] if geom.kind == "linear" else [1, cin, geom.h, geom.w]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"x": x})
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        sess.run(None, {"x": x})
        times.append((time.perf_counter() - t) * 1e3)
        if len(times) > 200:
            break
    return statistics.median(times)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def runs_here(profile: HardwareProfile) -> bool:
    """True when the profile describes a CPU like this one, so layers can be timed here."""
    isa = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
    if profile.accelerator != "cpu" or isa.get(platform.machine().lower()) != profile.isa:
        return False
    return {f.lower() for f in profile.flags} <= cpu_flags()
