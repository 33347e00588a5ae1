"""The measured per-operator latency table the pipeline's latency model takes as a device
table (``hadmc_core.hal.latency``): ``{"<geometry>|<precision>": [a_ms, b_ms_per_MMAC]}``,
and the device's whole-model term under ``model|<precision>`` (``[c, k, j]``,
``hadmc_core.hal.wholeterm``).

Each operator class (conv / depthwise conv / linear at a kernel, stride and input size) is
timed at three widths on this device, by the runtime it serves with (ONNX Runtime where
installed, else OpenVINO), and fitted to ``ms = a + b * MMACs``. Then a few calibration
networks built from the same classes are timed whole, which gives what a model costs
beyond the sum of its one-layer timings (a one-layer graph pays the call each time; a
model also adds, pools and reorders). All graphs are written as protobuf bytes, so neither
torch nor ``onnx`` is needed.
"""

from __future__ import annotations

import logging
import time

from hadmc_core import backends
from hadmc_core.backends import Backend
from hadmc_core.hal.latency import MEASURE_PRECISIONS, LayerGeom, fit_layer
from hadmc_core.hal.wholeterm import whole_model_term

log = logging.getLogger(__name__)

#: Operator classes typical of the model zoo at CIFAR (32x32) and ImageNet (224) scale,
#: with the reference widths the fit scales from. About 2-4 s on one core, and as long
#: again for the whole-model term.
OPERATORS: list[tuple[LayerGeom, int, int]] = [
    (LayerGeom("conv", 3, 1, 32, 32), 32, 32),
    (LayerGeom("conv", 3, 1, 16, 16), 64, 64),
    (LayerGeom("conv", 3, 1, 8, 8), 128, 128),
    (LayerGeom("conv", 3, 2, 32, 32), 32, 64),
    (LayerGeom("conv", 3, 2, 16, 16), 64, 128),
    (LayerGeom("conv", 1, 1, 16, 16), 64, 64),
    (LayerGeom("conv", 1, 1, 8, 8), 128, 128),
    (LayerGeom("dwconv", 3, 1, 16, 16), 64, 64),
    (LayerGeom("dwconv", 3, 2, 32, 32), 32, 32),
    (LayerGeom("conv", 3, 1, 56, 56), 64, 64),
    (LayerGeom("linear"), 512, 100),
]


def operator_table(threads: int = 1,
                   operators: list[tuple[LayerGeom, int, int]] | None = None,
                   precisions: tuple[str, ...] = MEASURE_PRECISIONS,
                   backend: str | Backend | None = None,
                   whole_term: bool = True) -> dict[str, list[float]]:
    """Fit every operator class at every precision; a class that fails is left out.
    ``backend``: a name or a backend; the first runtime installed here when None.
    ``whole_term``: add the whole-model term (``model|<precision>`` keys)."""
    runtime = backends.default() if backend is None else backends.resolve(backend)
    ops = OPERATORS if operators is None else operators
    table: dict[str, list[float]] = {}
    start = time.perf_counter()
    for geom, cin, cout in ops:
        for precision in precisions:
            key = f"{geom.key}|{precision}"
            try:
                a, b = fit_layer(geom, precision, (cin, cout), threads, backend=runtime)
            except Exception as e:  # noqa: BLE001 - runtimes raise their own types
                log.warning("latency of %s not measured: %s", key, str(e)[:200])
                continue
            table[key] = [round(a, 6), round(b, 6)]
    log.info("latency table: %d operator classes in %.1f s by %s", len(table),
             time.perf_counter() - start, runtime.name)
    if whole_term and table:
        table.update(whole_model_term(table, ops, threads, runtime, precisions))
    return table
