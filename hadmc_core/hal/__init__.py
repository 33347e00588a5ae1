"""Hardware abstraction layer: device profiles and local detection (torch-free).

The latency model lives in ``hadmc_core.hal.latency`` and is imported from there.
"""

from hadmc_core.hal.detect import detect_cpu_info, detect_profile
from hadmc_core.hal.profile import (
    HardwareProfile,
    Precision,
    builtin_profiles,
    list_profiles,
    load_profile,
    parse_profile,
)

__all__ = ["HardwareProfile", "Precision", "builtin_profiles", "detect_cpu_info",
           "detect_profile", "list_profiles", "load_profile", "parse_profile"]
