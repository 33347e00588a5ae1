"""HAD-MC core library: hardware-aware compression and delta updates.

Torch-dependent modules are imported lazily by the modules that need them so
that torch-free parts (``hadmc_core.delta``, ``hadmc_core.hal.profile``) stay
usable on edge devices.
"""

__version__ = "0.1.0"
