"""Build a hardware profile for the machine this runs on (torch-free; the agent uses it)."""

from __future__ import annotations

import os
import platform
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from hadmc_core.hal.profile import HardwareProfile

INT8_DOT = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "dotprod"}


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = (x.strip() for x in line.split(":", 1))
                info.setdefault(k, v)
    except OSError:
        pass
    return info


def _mem_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 1.0


def _ghz(info: dict[str, str]) -> float:
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        return int(khz) / 1e6
    except (OSError, ValueError):
        pass
    try:
        return float(info.get("cpu MHz", "")) / 1e3
    except ValueError:
        return 2.5


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def detect_cpu_info() -> dict:
    """Raw facts about this machine, as the edge agent reports them."""
    info = _cpuinfo()
    flags = (info.get("flags") or info.get("Features") or "").split()
    ort_version, providers = None, []
    try:
        import onnxruntime as ort

        ort_version, providers = ort.__version__, list(ort.get_available_providers())
    except ImportError:
        pass
    return {
        "cpu_model": info.get("model name") or info.get("Hardware") or platform.processor(),
        "machine": platform.machine(), "os": f"{platform.system()} {platform.release()}",
        "cores": _cores(), "memory_gb": _mem_gb(), "flags": sorted(set(flags)),
        "ghz": round(_ghz(info), 3), "onnxruntime": ort_version,
        "execution_providers": providers,
    }


def measure_bandwidth_gbs(mb: int = 256) -> float:
    """Copy bandwidth (read + write) of a large numpy buffer, best of three."""
    src = np.ones(mb * 1024 * 1024 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return round(2 * src.nbytes / best / 1e9, 1)


def detect_profile(name: str | None = None) -> HardwareProfile:
    cpu = detect_cpu_info()
    flags = set(cpu["flags"])
    arch = cpu["machine"].lower()
    isa = "x86_64" if arch in ("x86_64", "amd64") else "arm64" if arch in (
        "aarch64", "arm64") else "other"
    if "avx512f" in flags:
        fp32_per_cycle = 64
    elif "avx2" in flags and "fma" in flags:
        fp32_per_cycle = 32
    elif isa == "arm64":
        fp32_per_cycle = 8
    else:
        fp32_per_cycle = 8
    int8_mult = 4 if flags & INT8_DOT else 2
    fp32 = round(cpu["cores"] * cpu["ghz"] * fp32_per_cycle, 1)
    fp16 = bool({"avx512_fp16", "fphp", "asimdhp"} & flags)
    precisions = ["fp32", *(["fp16"] if fp16 else []), "int8"]
    peaks = {"fp32": fp32, "int8": fp32 * int8_mult, **({"fp16": fp32 * 2} if fp16 else {})}
    keep = {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_fp16",
            "neon", "asimd", "asimddp", "fphp", "asimdhp", "sve"}
    runtimes = [f"onnxruntime-cpu-{cpu['onnxruntime']}"] if cpu["onnxruntime"] else ["none"]
    int4 = bool(cpu["onnxruntime"]) and tuple(
        int(x) for x in cpu["onnxruntime"].split(".")[:2]) >= (1, 17)
    return HardwareProfile(
        name=name or f"local-{socket.gethostname()}",
        description=f"{cpu['cpu_model']} ({cpu['cores']} cores), detected",
        isa=isa, accelerator="cpu", cores=cpu["cores"], memory_gb=cpu["memory_gb"],
        peak_gops=peaks, memory_bandwidth_gbs=max(0.1, measure_bandwidth_gbs()),
        precisions=precisions, runtimes=runtimes, int4_weight_only=int4,
        channel_multiple=8, flags=sorted(flags & keep),
        source=f"detected on {socket.gethostname()} at "
               f"{datetime.now(UTC).isoformat(timespec='seconds')}",
    )
