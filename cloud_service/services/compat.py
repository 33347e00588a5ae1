"""Does a version fit a device? Input/output signature, several models, hardware and runtime.

A rollout assigns a version only to devices it fits; the others are listed as ``skipped``
with the reason (``services.rollouts``). The rules:

- **Signature.** A device that runs a version of the same model with other inputs or
  outputs (names, element types, shapes; symbolic dimensions match any size) is not given
  the version unless the rollout says ``replace_model``: applications on the device read
  those inputs and outputs.
- **Several models.** A version of a model the device does not run yet is a new
  deployment beside the models it runs (``services.deployments``), unless the device's
  agent runs one model only (it never sent per-model versions in a heartbeat) and already
  runs another model.
- **Hardware.** The version was built for a hardware profile; the device reports its own.
  The instruction set and the kind of accelerator (cpu, gpu, npu) must be the same, and a
  GPU or NPU version needs the accelerator's flags (``cuda``, ...). CPU extension flags
  (AVX-512, VNNI, ...) are not required: the CPU runtimes pick kernels at run time, so
  such a version runs everywhere on the ISA, only at another speed.
- **Runtime.** One of the profile's runtimes must be among the device's
  (``onnxruntime-cpu`` matches a device's ``onnxruntime-cpu-1.23``).
- A device that has not reported its profile yet is not assigned: its hardware is unknown.

A version built by a job records what it was built for (``built_for``, ``describe_build``):
the hardware class (``isa``, ``accelerator``, ``flags``), the runtime it was built and
checked with, the runtimes it may run on (for a device target only that one), the version
range of that runtime (from the version it was checked with, up to the next major
version) and the memory it needs (weights plus every intermediate tensor at batch 1).
Such a version is matched by these instead of its profile: the same ISA and accelerator
rules, one of ``runtimes`` on the device (within the range for the runtime it was built
with), and at least ``memory_mb`` of memory on the device.
"""

from __future__ import annotations

import math
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from cloud_service.errors import InvalidInputError
from cloud_service.models import Device, ModelVersion
from cloud_service.storage import ArtifactStore

if TYPE_CHECKING:
    from hadmc_core.hal.profile import HardwareProfile


def onnx_signature(path: Path) -> dict[str, Any]:
    """``{"inputs": [[name, elem_type, shape]], "outputs": [...]}`` of an ONNX file;
    symbolic or unknown dimensions are None."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and others
        raise InvalidInputError(f"the version's ONNX file cannot be read: {e}") from e
    init = {t.name for t in graph.initializer}

    def describe(values: Any) -> list[list[Any]]:
        out = []
        for v in values:
            if v.name in init:
                continue
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            out.append([v.name, int(t.elem_type), dims])
        return out

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


def ensure_signature(*, session: Session, store: ArtifactStore, version: ModelVersion
                     ) -> dict[str, Any]:
    """The version's signature, read from its ONNX file once and stored on the row."""
    if version.signature is not None:
        return version.signature
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        sig = onnx_signature(store.link_as(version.onnx_hash, Path(tmp), "model.onnx"))
    session.execute(update(ModelVersion).where(ModelVersion.id == version.id)
                    .values(signature=sig).execution_options(synchronize_session=False))
    version.signature = sig
    return sig


def _dims_match(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b,
                                                                                     strict=True))


def signature_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """None when ``new`` serves the same inputs and outputs as ``old``, else what differs."""
    for side in ("inputs", "outputs"):
        a, b = old.get(side) or [], new.get(side) or []
        if len(a) != len(b):
            return f"{len(b)} {side} instead of {len(a)}"
        for (na, ta, sa), (nb, tb, sb) in zip(a, b, strict=True):
            if na != nb or ta != tb or not _dims_match(sa, sb):
                return (f"{side[:-1]} {nb!r} {_fmt(sb)} instead of {na!r} {_fmt(sa)}"
                        if (na, ta) == (nb, tb) else
                        f"{side[:-1]} {nb!r} (type {tb}) instead of {na!r} (type {ta})")
    return None


def _fmt(dims: list[Any]) -> str:
    return "[" + ",".join("N" if d is None else str(d) for d in dims) + "]"


@lru_cache(maxsize=64)
def _profile(name: str) -> HardwareProfile | None:
    """A built-in profile, read once (a rollout checks it against every selected device)."""
    from hadmc_core.errors import HadmcError
    from hadmc_core.hal import load_profile

    try:
        return load_profile(name)
    except HadmcError:
        return None


def hardware_difference(profile_name: str, device_profile: dict[str, Any] | None
                        ) -> str | None:
    """None when a version built for ``profile_name`` runs on a device with this reported
    profile, else why not."""
    if not device_profile:
        return "the device has not reported its hardware profile yet"
    target = _profile(profile_name)
    if target is None:
        return f"the version's profile {profile_name!r} is not a known profile"
    isa, acc = device_profile.get("isa"), device_profile.get("accelerator")
    if (isa, acc) != (target.isa, target.accelerator):
        return (f"built for {target.name} ({target.isa} {target.accelerator}); the device is "
                f"{isa} {acc}")
    if target.accelerator != "cpu":
        missing = sorted(set(target.flags) - set(device_profile.get("flags") or []))
        if missing:
            return f"built for {target.name}, which needs {', '.join(missing)}"
    have = [str(r) for r in device_profile.get("runtimes") or []]
    if not any(r == t or r.startswith(t + "-") for t in target.runtimes for r in have):
        return (f"built for the runtime {' or '.join(target.runtimes)}; the device has "
                f"{', '.join(have) or 'none'}")
    return None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def split_runtime(runtime: str) -> tuple[str, str | None]:
    """``onnxruntime-cpu-1.23`` -> (``onnxruntime-cpu``, ``1.23``); no version -> None."""
    m = re.fullmatch(r"(.+?)-(\d+(?:\.\d+)*)", runtime)
    return (m.group(1), m.group(2)) if m else (runtime, None)


def version_range(version: str | None) -> dict[str, str] | None:
    """From the runtime version a version was checked with (major.minor) up to the next
    major version: ``2026.4.1`` -> ``{"min": "2026.4", "below": "2027"}``."""
    if not version:
        return None
    parts = _version_tuple(version)
    if not parts:
        return None
    return {"min": ".".join(str(x) for x in parts[:2]), "below": str(parts[0] + 1)}


def memory_needed_mb(path: Path) -> int:
    """What running the ONNX file at batch 1 holds in tensors, in MiB (rounded up): the
    file's size (its weights) plus every input, intermediate and output tensor whose shape
    shape inference knows (open dims taken as 1), as if none were reused. An upper bound
    on the runtime's tensor memory, not counting the runtime itself."""
    import onnx
    from onnx import helper, shape_inference

    model = onnx.load(str(path), load_external_data=False)
    try:
        graph = shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - onnx raises several types; the weights alone then
        graph = model.graph
    inits = {t.name for t in graph.initializer}
    tensors = 0
    for v in [*graph.input, *graph.value_info, *graph.output]:
        t = v.type.tensor_type
        if v.name in inits or not t.HasField("shape") or not t.elem_type:
            continue
        try:
            size = helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
        except (KeyError, TypeError, ValueError):
            continue
        tensors += size * math.prod(d.dim_value if d.HasField("dim_value") else 1
                                    for d in t.shape.dim)
    return max(1, math.ceil((path.stat().st_size + tensors) / (1 << 20)))


def describe_build(*, profile: HardwareProfile, runtime: str, runtime_version: str | None,
                   runtimes: list[str], memory_mb: int) -> dict[str, Any]:
    """A version's ``built_for``: the hardware class of ``profile``, the runtime it was
    built and checked with (``onnxruntime-cpu``), the runtimes it may run on, that
    runtime's version range and the memory it needs."""
    return {"isa": profile.isa, "accelerator": profile.accelerator,
            "flags": sorted(profile.flags), "runtime": runtime,
            "runtimes": list(dict.fromkeys(runtimes)),
            "runtime_version": version_range(runtime_version), "memory_mb": memory_mb}


def runtimes_of(version: ModelVersion) -> list[str] | None:
    """The runtimes a version may run on, the one it was built with first (the agent runs
    it with the first of them it has); None when not known."""
    if version.built_for and version.built_for.get("runtimes"):
        return [str(r) for r in version.built_for["runtimes"]]
    prof = _profile(version.profile)
    return list(prof.runtimes) if prof is not None else None


def runtimes_for(version: ModelVersion, device_profile: dict[str, Any] | None
                 ) -> list[str] | None:
    """``runtimes_of`` for one device: without the runtime it was built with when the
    device's version of that runtime is outside the recorded range (the agent then runs it
    with another of them, which the rollout checked it has)."""
    names = runtimes_of(version)
    built = version.built_for or {}
    rng, runtime = built.get("runtime_version"), built.get("runtime")
    if not names or not rng or not device_profile:
        return names
    have = [split_runtime(str(r)) for r in device_profile.get("runtimes") or []]
    versions = [v for n, v in have if n == runtime or n.startswith(f"{runtime}-")]
    if versions and not any(_in_range(v, rng) for v in versions):
        return [n for n in names if n != runtime] or names
    return names


def _in_range(version: str | None, rng: dict[str, str] | None) -> bool:
    if not rng:
        return True
    if version is None:
        return False
    have = _version_tuple(version)
    return _version_tuple(rng["min"]) <= have < _version_tuple(rng["below"])


def build_difference(built: dict[str, Any], device_profile: dict[str, Any] | None
                     ) -> str | None:
    """None when a version with this ``built_for`` runs on a device with this reported
    profile, else why not."""
    if not device_profile:
        return "the device has not reported its hardware profile yet"
    isa, acc = device_profile.get("isa"), device_profile.get("accelerator")
    if (isa, acc) != (built.get("isa"), built.get("accelerator")):
        return (f"built for {built.get('isa')} {built.get('accelerator')}; the device is "
                f"{isa} {acc}")
    if built.get("accelerator") != "cpu":
        missing = sorted(set(built.get("flags") or []) - set(device_profile.get("flags") or []))
        if missing:
            return f"built for an accelerator with {', '.join(missing)}; the device lacks them"
    have = [split_runtime(str(r)) for r in device_profile.get("runtimes") or []]
    wanted, rng = [str(r) for r in built.get("runtimes") or []], built.get("runtime_version")
    ok = [(w, v) for w in wanted for n, v in have if n == w or n.startswith(w + "-")]
    if not ok:
        return (f"built for the runtime {' or '.join(wanted)}; the device has "
                f"{', '.join(n + ('-' + v if v else '') for n, v in have) or 'none'}")
    if rng and not any(w != built.get("runtime") or _in_range(v, rng) for w, v in ok):
        return (f"built for {built.get('runtime')} {rng['min']} up to (not including) "
                f"{rng['below']}; the device has "
                f"{', '.join(w + ' ' + (v or 'of unknown version') for w, v in ok)}")
    need, mem = built.get("memory_mb"), device_profile.get("memory_gb")
    if need and isinstance(mem, int | float) and mem * 1024 < need:
        return f"needs {need} MiB of memory; the device has {mem * 1024:.0f} MiB"
    return None


def misfit(*, session: Session, store: ArtifactStore, version: ModelVersion, device: Device,
           replace_model: bool) -> str | None:
    """Why ``version`` must not go to ``device`` (None when it fits)."""
    why = build_difference(version.built_for, device.profile) if version.built_for \
        else hardware_difference(version.profile, device.profile)
    if why is not None:
        return why
    deps = {d.model_id: d for d in device.deployments}
    dep = deps.get(version.model_id)
    if dep is None:  # a model the device does not run yet: a deployment of its own
        others = sorted(m for m, d in deps.items() if d.current_version_id is not None)
        if others and not device.multi_model:
            return (f"the device's agent runs one model (model {others[0]}) and cannot add "
                    f"model {version.model_id}; upgrade hadmc-agent on it")
        return None
    if replace_model or dep.current_version_id is None \
            or dep.current_version_id == version.id:
        return None
    running = session.get(ModelVersion, dep.current_version_id)
    if running is None:
        return None
    diff = signature_difference(ensure_signature(session=session, store=store, version=running),
                                ensure_signature(session=session, store=store, version=version))
    if diff is not None:
        return (f"the version changes the interface the device serves ({diff}); set "
                "replace_model to replace it")
    return None
