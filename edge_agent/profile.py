"""The device profile in the HAL schema (``hadmc_core.hal.profile.HardwareProfile``).

CPU model, cores, clock and OS go into ``description``; ISA flags (AVX2, AVX-512 VNNI,
NEON/asimd, ...) into ``flags``; the architecture into ``isa``; the installed runtimes into
``runtimes``: ``onnxruntime-<provider>-<major.minor>`` per ONNX Runtime execution provider,
``openvino-cpu-<major.minor>`` for OpenVINO. The first word is the backend's name in
``hadmc_core.backends``, which a profile's runtime must match for a version to fit.
"""

from __future__ import annotations

import platform
from typing import Any

from hadmc_core.hal.detect import detect_cpu_info, detect_profile


def device_profile(name: str) -> dict[str, Any]:
    """Detect this machine (about half a second: it measures memory bandwidth)."""
    cpu = detect_cpu_info()
    prof = detect_profile(name=name)
    ort = cpu["onnxruntime"] or "absent"
    providers = ", ".join(cpu["execution_providers"]) or "none"
    desc = (f"{cpu['cpu_model']} ({cpu['cores']} cores at {cpu['ghz']:g} GHz, "
            f"{cpu['memory_gb']:g} GB), {cpu['os']} {platform.machine()}, "
            f"onnxruntime {ort} [{providers}], openvino {cpu['openvino'] or 'absent'}; "
            "detected by hadmc-agent")
    return prof.model_copy(update={"description": desc}).model_dump(mode="json")
