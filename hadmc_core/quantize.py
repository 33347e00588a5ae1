"""Layer-wise mixed precision, realized as ONNX Runtime static QDQ quantization.

1. Sensitivity: for each conv/linear layer alone, fake-quantize its weights (INT8
   per channel) and its input (UINT8 per tensor, calibrated range) and measure the
   relative error of the model's logits on a few samples.
2. Hardware-aware ranking: a layer's sensitivity is divided by the time INT8 saves on
   it according to the latency model, so layers that are both touchy and cheap stay
   at higher precision first.
3. The N most deserving layers (N from ``keep_ladder``, chosen by the controller)
   stay at the profile's higher precision; the rest become INT8 with the backend's
   static QDQ quantizer (ONNX Runtime's or NNCF's; per-channel weights; ``reduce_range``
   on CPUs without an INT8 dot-product instruction, which avoids saturation in the u8s8
   kernels).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from hadmc_core import backends
from hadmc_core.backends import Backend
from hadmc_core.config import QuantizeConfig
from hadmc_core.data import Split
from hadmc_core.onnx_io import weight_layers
from hadmc_core.progress import ProgressFn, no_progress

if TYPE_CHECKING:
    from hadmc_core.hal.profile import HardwareProfile

log = logging.getLogger(__name__)
INT8_DOT_FLAGS = {"avx512_vnni", "avx_vnni", "avx512vnni", "amx_int8", "dotprod", "asimddp"}


def use_reduce_range(cfg: QuantizeConfig, profile: HardwareProfile) -> bool:
    if cfg.reduce_range != "auto":
        return cfg.reduce_range == "on"
    return profile.isa == "x86_64" and not (INT8_DOT_FLAGS & {f.lower() for f in profile.flags})


def _fq_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    flat = w.reshape(w.shape[0], -1)
    scale = flat.abs().amax(1).clamp_min(1e-12) / qmax
    q = torch.round(flat / scale[:, None]).clamp(-qmax, qmax) * scale[:, None]
    return q.reshape(w.shape)


def _fq_act(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    zp = round(-lo / scale)
    return (torch.round(x / scale + zp).clamp(0, 255) - zp) * scale


@torch.no_grad()
def sensitivity(model: nn.Module, data: Split, cfg: QuantizeConfig, reduce_range: bool,
                progress: ProgressFn = no_progress,
                score: Callable[[torch.Tensor, torch.Tensor], float] | None = None
                ) -> dict[str, float]:
    """Relative logit error when only that layer is quantized, per layer name
    (``score(outputs, reference)`` instead, when given)."""
    model = model.cpu().eval()
    x = torch.from_numpy(data.x[: cfg.sensitivity_samples])
    ranges: dict[str, tuple[float, float]] = {}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}

    def record(name: str):
        def fn(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            t = inp[0]
            lo, hi = ranges.get(name, (0.0, 0.0))
            ranges[name] = (min(lo, float(t.min())), max(hi, float(t.max())))
        return fn

    hs = [m.register_forward_pre_hook(record(n)) for n, m in layers.items()]
    ref = model(x)
    for h in hs:
        h.remove()
    denom = float(ref.pow(2).mean()) + 1e-12
    bits = 7 if reduce_range else 8
    scores: dict[str, float] = {}
    for i, (name, mod) in enumerate(layers.items()):
        original = mod.weight.data.clone()
        mod.weight.data = _fq_weight(original, bits)
        lo, hi = ranges[name]
        h = mod.register_forward_pre_hook(lambda _m, inp, lo=lo, hi=hi: (_fq_act(inp[0], lo, hi),))
        out = model(x)
        h.remove()
        mod.weight.data = original
        scores[name] = (score(out, ref) if score is not None
                        else float((out - ref).pow(2).mean()) / denom)
        progress("q-sensitivity", i + 1, len(layers))
    return scores


def torch_to_onnx_names(model: nn.Module, example: torch.Tensor, onnx_path: Path) -> dict[str, str]:
    """Map torch layer names to ONNX node names by execution order, checking shapes."""
    order: list[tuple[str, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: order.append((n, tuple(m.weight.shape))))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model.eval()(example[:1])
    for h in hooks:
        h.remove()
    nodes = weight_layers(onnx_path)
    mapping = {}
    for (tname, tshape), (oname, oshape) in zip(order, nodes, strict=False):
        if tshape != oshape and tshape[::-1] != oshape:
            log.warning("layer order mismatch at %s (%s) vs %s (%s)", tname, tshape, oname, oshape)
            break
        mapping[tname] = oname
    return mapping


@dataclass
class Ranking:
    order: list[str]                 # layers, most deserving of higher precision first
    sensitivity: dict[str, float]
    int8_gain_ms: dict[str, float]


def rank_layers(sens: dict[str, float], gain_ms: dict[str, float]) -> Ranking:
    score = {n: s / max(gain_ms.get(n, 0.0), 1e-4) for n, s in sens.items()}
    return Ranking(sorted(score, key=score.get, reverse=True), sens, gain_ms)  # type: ignore[arg-type]


def quantize_qdq(fp32_path: Path, out_path: Path, calib: Split, cfg: QuantizeConfig,
                 reduce_range: bool, exclude_nodes: list[str] | None = None,
                 backend: str | Backend = "onnxruntime") -> Path:
    """Static INT8 quantization by ``backend`` (ONNX Runtime's QDQ quantizer by default) on
    the first ``cfg.calib_samples`` samples; ``exclude_nodes`` stay in floating point."""
    return backends.resolve(backend).quantize_int8(
        fp32_path, out_path, calib.x[:cfg.calib_samples], keep_fp32=list(exclude_nodes or []),
        per_channel=cfg.per_channel, reduce_range=reduce_range)
