"""Backends: the runtimes a compressed model is built for, run, timed and profiled with.

Torch-free (numpy and the runtime, imported when first used): the edge agent imports it.
A backend is one module with a ``Backend`` subclass plus a ``register`` call below.

    >>> from hadmc_core import backends
    >>> backends.names()
    ['onnxruntime', 'openvino']
    >>> backends.get("onnxruntime").time_model("model.onnx", (1, 3, 32, 32))  # doctest: +SKIP
    Timing(median_ms=0.41, p90_ms=0.45, p95_ms=0.47, runs=50, threads=2)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hadmc_core.backends.base import Backend, Session, Timing, default_threads, time_runs
from hadmc_core.backends.onnxruntime import OnnxRuntimeBackend
from hadmc_core.backends.openvino import OpenVinoBackend
from hadmc_core.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    from hadmc_core.hal.profile import HardwareProfile

__all__ = ["Backend", "Session", "Timing", "default", "default_threads", "for_profile", "get",
           "names", "register", "time_runs"]

_REGISTRY: dict[str, type[Backend]] = {}
_INSTANCES: dict[str, Backend] = {}


def register(backend_cls: type[Backend]) -> type[Backend]:
    """Register a backend class under its ``name`` (usable as a class decorator)."""
    name = getattr(backend_cls, "name", "")
    if not name or "-" in name:
        raise ValueError(f"backend {backend_cls.__name__} needs a name without '-'")
    _REGISTRY[name] = backend_cls
    _INSTANCES.pop(name, None)
    return backend_cls


def names() -> list[str]:
    """Registered backends, in registration order (the first is the default)."""
    return list(_REGISTRY)


def get(name: str) -> Backend:
    """The backend registered as ``name`` (one instance per process)."""
    if name not in _REGISTRY:
        raise UnknownNameError("backend", name, names())
    if name not in _INSTANCES:
        _INSTANCES[name] = _REGISTRY[name]()
    return _INSTANCES[name]


def resolve(backend: str | Backend) -> Backend:
    """A backend given by name or as an instance."""
    return get(backend) if isinstance(backend, str) else backend


def backend_name(runtime: str) -> str:
    """The backend a profile's runtime names: ``onnxruntime-cpu-1.20`` -> ``onnxruntime``."""
    return runtime.split("-", 1)[0].lower()


def for_profile(profile: HardwareProfile) -> Backend:
    """The first of ``profile.runtimes`` that is a registered backend installed here.

    A runtime ``<name>`` or ``<name>-<provider>-<version>`` selects backend ``<name>``.
    ConfigError when none is, naming what is registered and what is not installed.
    """
    missing = []
    for runtime in profile.runtimes:
        name = backend_name(runtime)
        if name in _REGISTRY:
            backend = get(name)
            if backend.available():
                return backend
            missing.append(name)
    unknown = [r for r in profile.runtimes if backend_name(r) not in _REGISTRY]
    parts = []
    if missing:
        parts.append(f"{', '.join(dict.fromkeys(missing))} not installed here "
                     f"(pip install {' '.join(dict.fromkeys(missing))})")
    if unknown:
        parts.append(f"{', '.join(unknown)} not a backend (backends: {', '.join(names())})")
    raise ConfigError(f"profile {profile.name!r}: no runtime of {', '.join(profile.runtimes)} "
                      f"can run here: {'; '.join(parts)}")


def default() -> Backend:
    """The first registered backend installed here (ONNX Runtime where it is)."""
    for name in _REGISTRY:
        if get(name).available():
            return get(name)
    raise ConfigError(f"no runtime installed: install one of {', '.join(names())}")


register(OnnxRuntimeBackend)
register(OpenVinoBackend)
