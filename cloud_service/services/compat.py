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
"""

from __future__ import annotations

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


def misfit(*, session: Session, store: ArtifactStore, version: ModelVersion, device: Device,
           replace_model: bool) -> str | None:
    """Why ``version`` must not go to ``device`` (None when it fits)."""
    why = hardware_difference(version.profile, device.profile)
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
