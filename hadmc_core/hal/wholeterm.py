"""A device's whole-model term: what its models cost beyond the sum of their layers as the
one-layer graphs of its operator table time them. Torch-free (the edge agent runs it).

A layer timed alone in its own graph is not the layer inside a model: a one-layer graph
pays the call, the input copy and layout changes each time (OpenVINO most, INT8 most of
all), and a kernel of tens of microseconds runs inside one scheduler time slice while a
whole model spans many. A model also runs work no weight layer accounts for (additions,
pooling, reorders, quantizing the input). So, beside its table, a device times a few
*calibration chains* whole: networks built from the table's own operator classes (a
residual block for each class that keeps its shape, a pooling step between sizes, a
global pooling and the table's linear layers at the end), at the table's widths and at a
half and a quarter of them, in FP32 and INT8 exactly as the one-layer graphs are written.
Per precision it fits ``whole ms = c + k * slope + j * fixed``, where ``fixed`` is the
sum of the table's constants over the chain's layers and ``slope`` the sum of their MAC
parts: a one-layer graph's constant is mostly the call, which a model pays once, so it
gets its own coefficient. The term travels inside the table under ``model|<precision>``
keys (``[c, k, j]``), which ``LatencyModel`` reads as its whole-model term
(``LatencyModel.model_ms``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from hadmc_core import backends
from hadmc_core.backends import Backend
from hadmc_core.hal import onnxwrite as ow
from hadmc_core.hal.latency import MEASURE_PRECISIONS, TERM_PREFIX, LayerGeom

log = logging.getLogger(__name__)
#: Fractions of the table's widths each chain is built at (one fit point each).
WIDTHS = (1.0, 0.5, 0.25)


def term_key(precision: str) -> str:
    return f"{TERM_PREFIX}{precision}"


@dataclass
class Chain:
    """One calibration network: its input shape and its steps in order. A step is
    ``("layer", geom, cin, cout)``, ``("block", geom, c, c)`` (two layers and a residual
    addition), ``("pool", factor)``, ``("gap",)``."""

    input_shape: tuple[int, int, int]
    steps: list[tuple] = field(default_factory=list)

    def layers(self) -> list[tuple[LayerGeom, int, int]]:
        out: list[tuple[LayerGeom, int, int]] = []
        for s in self.steps:
            if s[0] in ("layer", "block"):
                out += [(s[1], s[2], s[3])] * (2 if s[0] == "block" else 1)
        return out


def chains(operators: list[tuple[LayerGeom, int, int]], width: float = 1.0) -> list[Chain]:
    """Calibration networks from operator classes ``(geom, cin, cout)``, widths scaled by
    ``width``: convolutions from the largest input size down (stride 1 before stride 2;
    a class of stride 1 as a residual block at its output width, after a layer that
    changes the width if it does), a new network where the sizes do not connect, the
    linear layers after the last."""
    def scale(c: int) -> int:
        return c if c <= 4 else max(1, round(c * width))

    convs = sorted((o for o in operators if o[0].kind != "linear"),
                   key=lambda o: (-o[0].h, o[0].stride, o[0].key))
    out: list[Chain] = []
    c = h = w = 0
    for geom, cin, cout in convs:
        connects = bool(out) and geom.h <= h and h % geom.h == 0 and w % geom.w == 0 \
            and h // geom.h == w // geom.w
        if not connects:
            c, h, w = scale(cout if geom.kind == "dwconv" else cin), geom.h, geom.w
            out.append(Chain((c, h, w)))
        elif geom.h < h:
            out[-1].steps.append(("pool", h // geom.h))
            h, w = geom.h, geom.w
        co = c if geom.kind == "dwconv" else scale(cout)
        if geom.stride != 1 or co != c:
            out[-1].steps.append(("layer", geom, c, co))
        if geom.stride == 1:  # a stage of the class at its output width (a stem, too)
            out[-1].steps.append(("block", geom, co, co))
        c, (h, w) = co, geom.out_hw
    linears = [o for o in operators if o[0].kind == "linear"]
    if not out and linears:
        c = scale(linears[0][1])
        out.append(Chain((c, 1, 1)))
    for ch in out:
        ch.steps.append(("gap",))
    for geom, _, cout in linears:
        co = max(1, round(cout * width))
        out[-1].steps.append(("layer", geom, c, co))
        c = co
    return out


class _Writer:
    """Nodes of a chain in FP32 (Conv+Relu) or INT8 (the QDQ pattern of
    ``latency._layer_onnx``: uint8 activations, int8 weights, int32 biases)."""

    def __init__(self, precision: str) -> None:
        self.int8 = precision == "int8"
        self.nodes: list[bytes] = []
        self.inits: list[bytes] = []
        self.n = 0
        self.rng = np.random.default_rng(0)
        if self.int8:
            self.sx, self.sw = 0.05, 0.002
            self.inits += [ow.tensor("sx", np.array(self.sx, np.float32)),
                           ow.tensor("zx", np.array(128, np.uint8)),
                           ow.tensor("zy", np.array(0, np.uint8)),
                           ow.tensor("sw", np.array(self.sw, np.float32)),
                           ow.tensor("zw", np.array(0, np.int8)),
                           ow.tensor("sb", np.array(self.sx * self.sw, np.float32)),
                           ow.tensor("zb", np.array(0, np.int32))]

    def _name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def _requant(self, y: str) -> str:
        """INT8: quantize with zero point 0 (absorbs a ReLU) and dequantize."""
        q, d = self._name("q"), self._name("d")
        self.nodes += [ow.node("QuantizeLinear", [y, "sx", "zy"], [q]),
                       ow.node("DequantizeLinear", [q, "sx", "zy"], [d])]
        return d

    def input(self) -> str:
        if not self.int8:
            return "x"
        self.nodes += [ow.node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
                       ow.node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"])]
        return "xd"

    def _weight(self, shape: list[int], with_bias: bool) -> tuple[str, str | None]:
        w = self.rng.standard_normal(shape).astype(np.float32) * 0.05
        wn, bn = self._name("w"), self._name("b")
        if not self.int8:
            self.inits.append(ow.tensor(wn, w))
            if with_bias:
                self.inits.append(ow.tensor(bn, np.zeros(shape[0], np.float32)))
            return wn, bn if with_bias else None
        self.inits.append(ow.tensor(wn + "q", (w / self.sw).clip(-127, 127).astype(np.int8)))
        self.nodes.append(ow.node("DequantizeLinear", [wn + "q", "sw", "zw"], [wn]))
        if with_bias:
            self.inits.append(ow.tensor(bn + "q", np.zeros(shape[0], np.int32)))
            self.nodes.append(ow.node("DequantizeLinear", [bn + "q", "sb", "zb"], [bn]))
        return wn, bn if with_bias else None

    def layer(self, x: str, geom: LayerGeom, cin: int, cout: int, last: bool = False) -> str:
        y = self._name("y")
        if geom.kind == "linear":
            wn, _ = self._weight([cin, cout], False)
            self.nodes.append(ow.node("MatMul", [x, wn], [y]))
            if last and not self.int8:
                return y
        else:
            dw = geom.kind == "dwconv"
            wn, bn = self._weight([cout, 1 if dw else cin, geom.k, geom.k], True)
            assert bn is not None
            self.nodes.append(ow.node("Conv", [x, wn, bn], [y], kernel_shape=[geom.k] * 2,
                                      strides=[geom.stride] * 2, pads=[geom.k // 2] * 4,
                                      group=cin if dw else 1))
        return self._requant(y) if self.int8 else self._relu(y)

    def _relu(self, y: str) -> str:
        r = self._name("r")
        self.nodes.append(ow.node("Relu", [y], [r]))
        return r

    def add(self, a: str, b: str) -> str:
        y = self._name("s")
        self.nodes.append(ow.node("Add", [a, b], [y]))
        return self._requant(y) if self.int8 else self._relu(y)

    def pool(self, x: str, factor: int) -> str:
        y = self._name("p")
        self.nodes.append(ow.node("MaxPool", [x], [y], kernel_shape=[factor] * 2,
                                  strides=[factor] * 2))
        return self._requant(y) if self.int8 else y

    def gap(self, x: str) -> str:
        y, f = self._name("g"), self._name("f")
        self.nodes.append(ow.node("GlobalAveragePool", [x], [y]))
        if self.int8:
            y = self._requant(y)
        self.nodes.append(ow.node("Flatten", [y], [f], axis=1))
        return f


def chain_onnx(chain: Chain, precision: str) -> bytes:
    """The chain as an ONNX model (protobuf bytes; input ``x`` at batch 1)."""
    wr = _Writer(precision)
    x = wr.input()
    last = len(chain.steps) - 1
    channels = chain.input_shape[0]
    for i, step in enumerate(chain.steps):
        if step[0] == "block":
            _, geom, c, _ = step
            x = wr.add(x, wr.layer(wr.layer(x, geom, c, c), geom, c, c))
        elif step[0] == "layer":
            x = wr.layer(x, step[1], step[2], step[3], last=i == last)
            channels = step[3]
        elif step[0] == "pool":
            x = wr.pool(x, step[1])
        else:
            x = wr.gap(x)
    return ow.model(wr.nodes, [ow.value_info("x", [1, *chain.input_shape])],
                    [ow.value_info(x, [1, channels])], wr.inits, name="chain")


def table_parts(table: dict[str, list[float]], layers: list[tuple[LayerGeom, int, int]],
                precision: str) -> tuple[float, float] | None:
    """The table's estimate over ``layers`` in two parts: the sum of the lines' constants
    ``a`` and of their MAC parts ``b * MMACs``; None when a class is not in the table."""
    fixed = slope = 0.0
    for geom, cin, cout in layers:
        line = table.get(f"{geom.key}|{precision}")
        if line is None:
            return None
        fixed += line[0]
        slope += line[1] * geom.macs(cin, cout) / 1e6
    return fixed, slope


def time_chain(chain: Chain, precision: str, threads: int, backend: Backend,
               runs: int = 30, warmup: int = 5) -> float:
    """Median ms of the chain whole at batch 1 (the timing loop of the agent's smoke
    test: ``backends.time_runs``)."""
    sess = backend.open(chain_onnx(chain, precision), threads, batch=1)
    feeds = {"x": np.random.default_rng(1).standard_normal(
        (1, *chain.input_shape)).astype(np.float32)}
    return backends.time_runs(lambda: sess.run(feeds), runs, warmup, 0.1, threads,
                              max_runs=200).median_ms


def whole_model_term(table: dict[str, list[float]],
                     operators: list[tuple[LayerGeom, int, int]], threads: int = 1,
                     backend: str | Backend | None = None,
                     precisions: tuple[str, ...] = MEASURE_PRECISIONS,
                     widths: tuple[float, ...] = WIDTHS) -> dict[str, list[float]]:
    """``{"model|<precision>": [c, k, j]}``: each calibration chain of ``operators`` timed
    whole against ``table``'s estimate of its layers, fitted per precision (``fit_term``).
    A precision with fewer than three chains timed is left out (a chain that fails is
    logged)."""
    runtime = backends.default() if backend is None else backends.resolve(backend)
    points: dict[str, list[tuple[float, float, float]]] = {}
    for width in widths:
        for chain in chains(operators, width):
            for p in precisions:
                parts = table_parts(table, chain.layers(), p)
                if parts is None:
                    continue
                try:
                    ms = time_chain(chain, p, threads, runtime)
                except Exception as e:  # noqa: BLE001 - runtimes raise their own types
                    log.warning("calibration chain at %s not timed: %s", p, str(e)[:200])
                    continue
                points.setdefault(p, []).append((*parts, ms))
    out = {}
    for p, pts in points.items():
        if len(pts) >= 3:
            out[term_key(p)] = [round(v, 6) for v in fit_term(pts)]
    log.info("whole-model term from %d chains: %s", sum(map(len, points.values())), out)
    return out


def fit_term(points: list[tuple[float, float, float]]) -> list[float]:
    """``[c, k, j]`` (all >= 0) of ``whole = c + k * slope + j * fixed`` over points
    ``(fixed, slope, whole)``: ``fixed`` the table's constants summed over a chain's
    layers, ``slope`` their MAC parts. Minimizes the sum of absolute *relative* errors
    (iteratively reweighted least squares), so a small chain weighs as much as a big one
    and a timing that a busy moment stretched moves the fit little; a coefficient that
    would be negative is left out (the best fit of the rest)."""
    x = np.array([[1.0, s, f] for f, s, _ in points])
    y = np.array([w for _, _, w in points])
    scale = 1.0 / np.maximum(y, 1e-9)
    best: tuple[float, np.ndarray] | None = None
    for cols in ([0, 1, 2], [1, 2], [0, 1], [0, 2], [1], [2], [0]):
        a = x[:, cols] * scale[:, None]
        b = y * scale
        weights = np.ones(len(y))
        coef = np.zeros(len(cols))
        for _ in range(50):
            sw = np.sqrt(weights)
            coef = np.linalg.lstsq(a * sw[:, None], b * sw, rcond=None)[0]
            weights = 1.0 / np.maximum(np.abs(b - a @ coef), 1e-4)
        if (coef < 0).any():
            continue
        full = np.zeros(3)
        full[cols] = coef
        err = float(np.abs((x @ full - y) * scale).sum())
        if best is None or err < best[0]:
            best = (err, full)
    assert best is not None  # the constant alone is never negative
    return [float(v) for v in best[1]]
