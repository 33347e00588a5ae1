"""Hardware abstraction layer: device profiles (torch-free) and the latency model."""

from hadmc_core.hal.detect import detect_cpu_info, detect_profile
from hadmc_core.hal.profile import (
    HardwareProfile,
    builtin_profiles,
    list_profiles,
    load_profile,
    parse_profile,
)

__all__ = ["HardwareProfile", "builtin_profiles", "detect_cpu_info", "detect_profile",
           "list_profiles", "load_profile", "parse_profile"]
