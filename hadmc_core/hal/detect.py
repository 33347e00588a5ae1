"""Build a hardware profile for the machine this runs on (torch-free; the edge agent uses it).

Peak throughput is an estimate from the CPU's vector flags and clock:
``cores x GHz x ops/cycle``, with ops/cycle per core taken from the widest FMA the flags
announce (see ``_fp32_ops_per_cycle``). Memory bandwidth is measured with a numpy copy.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import socket
import time
from datetime import datetime, timezone
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hadmc_core.hal.profile import HardwareProfile, Precision

log = logging.getLogger(__name__)

FALLBACK_GHZ = 2.5
INT8_DOT = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "dotprod"}
FP16_ARITH = {"avx512_fp16", "fphp", "asimdhp"}
# Flags worth keeping in a profile (cpuinfo spelling; on aarch64 NEON is "asimd").
KEEP_FLAGS = {"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
              "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
              "neon", "asimd", "asimddp", "asimdhp", "fphp", "i8mm", "bf16", "sve", "sve2"}
# Arm "CPU part" ids for the model name when /proc/cpuinfo has no "model name".
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55",
             "0xd07": "Cortex-A57", "0xd08": "Cortex-A72", "0xd09": "Cortex-A73",
             "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1",
             "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
             "0xd42": "Cortex-A78AE", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
             "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2"}
ORT_PROVIDER_NAMES = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda",
                      "TensorrtExecutionProvider": "tensorrt", "CANNExecutionProvider": "cann",
                      "OpenVINOExecutionProvider": "openvino", "DnnlExecutionProvider": "dnnl",
                      "XnnpackExecutionProvider": "xnnpack", "ROCMExecutionProvider": "rocm",
                      "MIGraphXExecutionProvider": "migraphx", "QNNExecutionProvider": "qnn",
                      "CoreMLExecutionProvider": "coreml", "DmlExecutionProvider": "dml"}


@lru_cache(maxsize=1)
def _read_cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if ":" in line:
            k, v = (x.strip() for x in line.split(":", 1))
            info.setdefault(k, v)
    return info


def cpuinfo() -> dict[str, str]:
    """Fields of the first processor block of /proc/cpuinfo (empty off Linux). The one
    reader of /proc/cpuinfo in the project; read once per process."""
    return dict(_read_cpuinfo())


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo spells them (x86 ``flags``, Arm
    ``Features``); empty off Linux."""
    info = _read_cpuinfo()
    return set((info.get("flags") or info.get("Features") or "").split())


def _mem_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return 1.0


def _ghz(info: dict[str, str]) -> float:
    """Max clock from cpufreq, else the current "cpu MHz", else FALLBACK_GHZ."""
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        return int(khz) / 1e6
    except (OSError, ValueError):
        pass
    try:
        mhz = float(info.get("cpu MHz", ""))
        if mhz > 0:
            return mhz / 1e3
    except ValueError:
        pass
    return FALLBACK_GHZ


def cores() -> int:
    """CPUs this process may run on."""
    return _cores()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (the Arm core's name where /proc/cpuinfo has none)."""
    return _cpu_model(_read_cpuinfo())


def _cpu_model(info: dict[str, str]) -> str:
    if info.get("model name"):
        return info["model name"]
    part = ARM_PARTS.get(info.get("CPU part", "").lower())
    if part:
        return f"Arm {part}"
    return info.get("Hardware") or platform.processor() or platform.machine() or "unknown"


def _onnxruntime() -> tuple[str | None, list[str]]:
    try:
        import onnxruntime as ort
    except ImportError:
        return None, []
    return ort.__version__, list(ort.get_available_providers())


def _openvino() -> str | None:
    """OpenVINO's version when it is installed (read from its metadata, not imported)."""
    try:
        return version("openvino")
    except PackageNotFoundError:
        return None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:2])


def detect_cpu_info() -> dict[str, Any]:
    """Raw facts about this machine, as the edge agent reports them (JSON-serializable)."""
    info = cpuinfo()
    flags = cpu_flags()
    ort_version, providers = _onnxruntime()
    return {
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(info),
        "vendor": info.get("vendor_id") or info.get("CPU implementer"),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "cores": _cores(),
        "memory_gb": _mem_gb(),
        "ghz": round(_ghz(info), 3),
        "flags": sorted(set(flags)),
        "onnxruntime": ort_version,
        "execution_providers": providers,
        "openvino": _openvino(),
    }


def measure_bandwidth_gbs(mb: int = 128, repeats: int = 3) -> float:
    """Copy bandwidth (bytes read + bytes written per second) of an ``mb`` MiB buffer.

    Two buffers of ``mb`` MiB each; one untimed copy faults the pages in, then the best
    of ``repeats`` timed copies counts. About half a second with the default 128 MiB.
    """
    src = np.empty(mb * 1024 * 1024, dtype=np.uint8)
    src.fill(1)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return round(2 * src.nbytes / max(best, 1e-9) / 1e9, 1)


def _isa(machine: str) -> Literal["x86_64", "arm64", "other"]:
    m = machine.lower()
    if m in ("x86_64", "amd64"):
        return "x86_64"
    return "arm64" if m in ("aarch64", "arm64") else "other"


def _fp32_ops_per_cycle(isa: str, flags: set[str]) -> int:
    """FP32 ops per cycle per core: 2 FMA pipes x lanes x 2 (1 FMA = 2 ops)."""
    if "avx512f" in flags:
        return 64  # 2 x 16 lanes x 2 (Skylake-SP and later with two 512-bit FMA units)
    if "avx2" in flags and "fma" in flags:
        return 32  # 2 x 8 lanes x 2
    if isa == "arm64":
        # Armv8.2+ cores (dotprod, e.g. Cortex-A76) have two 128-bit FMA pipes; A72/A53 one.
        return 16 if flags & {"asimddp", "dotprod"} else 8
    return 8


def _runtimes(ort_version: str | None, providers: list[str],
              openvino_version: str | None = None) -> list[str]:
    """``onnxruntime-<provider>-<major.minor>`` per execution provider, then
    ``openvino-cpu-<major.minor>``; the backend names lead (``hadmc_core.backends``)."""
    found = []
    if ort_version:
        mm = ".".join(str(x) for x in _version_tuple(ort_version))
        names = [ORT_PROVIDER_NAMES[p] for p in providers if p in ORT_PROVIDER_NAMES]
        found += [f"onnxruntime-{n}-{mm}" for n in names] or [f"onnxruntime-cpu-{mm}"]
    if openvino_version:
        mm = ".".join(str(x) for x in _version_tuple(openvino_version))
        found.append(f"openvino-cpu-{mm}")
    return found or ["none"]


def detect_profile(name: str | None = None) -> HardwareProfile:
    """A profile for this machine's CPU: flags, cores, memory, estimated peaks, measured
    memory bandwidth. ``name`` defaults to ``local-<hostname>``."""
    cpu = detect_cpu_info()
    flags = {f.lower() for f in cpu["flags"]}
    isa = _isa(cpu["machine"])
    fp32 = round(cpu["cores"] * cpu["ghz"] * _fp32_ops_per_cycle(isa, flags), 1)
    # INT8: dot-product instructions (VNNI, SDOT) do 4 MACs per 32-bit lane = 4x FP32;
    # without them (vpmaddubsw + vpmaddwd, or SMLAL) about 2x.
    peaks: dict[Precision, float] = {"fp32": fp32,
                                     "int8": round(fp32 * (4 if flags & INT8_DOT else 2), 1)}
    precisions: list[Precision] = ["fp32", "int8"]
    if flags & FP16_ARITH:
        peaks["fp16"] = round(fp32 * 2, 1)
        precisions.insert(1, "fp16")
    ort_version = cpu["onnxruntime"]
    host = cpu["hostname"]
    mem_mb = max(16, min(128, int(cpu["memory_gb"] * 1024 / 16)))  # small boards: small buffer
    return HardwareProfile(
        name=name or f"local-{host}",
        description=f"{cpu['cpu_model']} ({cpu['cores']} cores at {cpu['ghz']:g} GHz), detected",
        isa=isa, accelerator="cpu", cores=cpu["cores"], memory_gb=max(cpu["memory_gb"], 0.1),
        peak_gops=peaks, memory_bandwidth_gbs=max(0.1, measure_bandwidth_gbs(mem_mb)),
        precisions=precisions, runtimes=_runtimes(ort_version, cpu["execution_providers"],
                                                       cpu["openvino"]),
        # ONNX Runtime's MatMulNBits (INT4 weight-only) contrib op exists from 1.17.
        int4_weight_only=bool(ort_version) and _version_tuple(ort_version) >= (1, 17),
        channel_multiple=8, flags=sorted(flags & KEEP_FLAGS),
        source=f"detected on {host} at {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
    )
