"""What a job compresses for: the hardware profile, the runtime, the latency table, and what
the version records (``built_for``) and its report says (``target``).

- A **profile** target: the built-in profile; its first runtime installed on the worker
  builds the version, which may run on any of the profile's runtimes.
- A **device** target: the device's reported profile with its runtime (the first it
  reported, which its agent also measured its operator latency table with), and that
  table as the latency model's device table (the report's ``latency_source`` is
  ``device_table``). A device that has not sent a table: its reported profile alone (the
  latency is estimated from it, or measured when the worker is of the same class), and the
  report's ``target.notes`` says so. The version runs on that runtime only.
- A **group** (devices by tag): the runtime they all have, the profile of the slowest of
  them (lowest FP32 peak), and their tables combined per operator class as the upper
  envelope: ``ms = max(a) + max(b) * MMACs`` over the devices that measured it. A latency
  budget is a promise for every device of the group; the slowest device per operator keeps
  the estimate at or above each device's own (a percentile would let some devices exceed
  the budget). Devices without a table are named in the notes.

A table carries the device's whole-model term (``model|<precision>``: ``[c, k, j]``,
``hadmc_core.hal.wholeterm``): what the device's models cost beyond the sum of their
one-layer timings. The predicted latency is the whole-model estimate through it
(``target.whole_model`` says so); a table without one (an older agent) predicts the plain
layer sum, and the notes say so. A group's terms are combined as its tables are, the upper
envelope coefficient by coefficient; a device without a term counts as ``[0, 1, 1]`` (the
plain sum), so the group's estimate stays at or above each device's own.

A device's table predictions are scaled by its correction from the p50s it reported for
versions predicted from its table (``cloud_service.services.feedback``,
``hadmc_core.hal.feedback``; one factor per precision); a group's corrections combine as
its tables do, the largest factor per precision, a device without reported p50s of that
precision counting as 1. The report's ``target.correction``
keeps it (None: none), ``target.table_ms`` each device's own uncorrected prediction of the
version, which the p50s it reports for the version are paired with in turn.

Devices are read again when the job runs (their profile or table may have changed since
submission); a device revoked meanwhile is left out, and the job fails when none is left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from cloud_service.models import Device, Job
from cloud_service.services.feedback import correction_for
from cloud_service.services.plans import line_of

if TYPE_CHECKING:
    from hadmc_core.hal.feedback import Correction
    from hadmc_core.hal.profile import HardwareProfile

#: Keys of a table's whole-model term (``hadmc_core.hal.latency.TERM_PREFIX``; the API
#: process does not import the latency model).
TERM_PREFIX = "model|"
#: Where a device-table prediction's whole-model term comes from (``target.whole_model``).
WHOLE_MODEL = ("the device's whole-model term: calibration networks of its operator classes "
               "timed whole on it against its table (hadmc_core.hal.wholeterm)")
#: How a group's tables are combined (the report's ``target.combine``).
COMBINE = "slowest per operator: max(a) + max(b) * MMACs over the devices that measured it"


@dataclass
class Plan:
    profile: HardwareProfile
    #: The latency model's device table (None: the profile's own latency model).
    device_table: dict[str, list[float]] | None
    #: The runtime the target asks for (``openvino-cpu``); None: the profile's first.
    runtime: str | None
    #: The report's ``target`` section.
    info: dict[str, Any] = field(default_factory=dict)
    #: The device's (a group's: combined) correction from its reported p50s.
    correction: Correction | None = None
    #: Each targeted device's own table, by device id (``compress(device_tables=...)``).
    device_tables: dict[str, dict[str, list[float]]] = field(default_factory=dict)


def combine_tables(tables: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Per operator class, the upper envelope of the devices' lines, and of their
    whole-model terms coefficient by coefficient (see module doc)."""
    out: dict[str, list[float]] = {}
    term_keys = {k for t in tables for k in t if k.startswith(TERM_PREFIX)}
    for table in tables:
        if term_keys and not any(k.startswith(TERM_PREFIX) for k in table):
            table = {**table, **dict.fromkeys(term_keys, [0.0, 1.0, 1.0])}  # the plain sum
        for key, line in table.items():
            have = out.get(key)
            if have is not None and len(have) != len(line):  # [c, k] is [c, k, k]
                have, line = _three(have), _three(line)
            out[key] = list(line) if have is None else [
                max(h, v) for h, v in zip(have, line, strict=True)]
    return out


def _three(line: list[float]) -> list[float]:
    return [*line, line[1]] if len(line) == 2 else list(line)


def _table(dev: Device) -> dict[str, list[float]] | None:
    """The device's operator table with its whole-model term (``model|<precision>``)."""
    ops = (dev.latency or {}).get("operators") or {}
    good = {k: [float(x) for x in v] for k, v in ops.items()
            if isinstance(v, list) and (len(v) == 2 or (len(v) == 3
                                                      and k.startswith(TERM_PREFIX)))}
    return good if any(not k.startswith(TERM_PREFIX) for k in good) else None


def plan(session: Session, job: Job) -> Plan:
    """The plan of ``job``; HadmcError when its devices can no longer be targeted."""
    from hadmc_core.errors import HadmcError
    from hadmc_core.hal import load_profile
    from hadmc_core.hal.profile import parse_profile

    target = job.target or {"profile": job.profile}
    if "device_ids" not in target:
        return Plan(load_profile(target.get("profile") or job.profile), None, None,
                    {"kind": "profile", "profile": job.profile})
    ids = [int(i) for i in target["device_ids"]]
    found = {d.id: d for d in session.query(Device).filter(Device.id.in_(ids))}
    notes = [f"device {i} was revoked or removed after submission; left out" for i in ids
             if i not in found or found[i].revoked_at is not None or not found[i].profile]
    devices = [found[i] for i in ids if i in found and found[i].revoked_at is None
               and found[i].profile]
    if not devices:
        raise HadmcError(f"none of the target's devices ({', '.join(map(str, ids))}) can be "
                         "targeted any more (revoked, or without a profile)")
    runtime = str(target.get("runtime") or "")
    profiles = {d.id: parse_profile(d.profile, f"device {d.id}") for d in devices}
    slowest = min(devices, key=lambda d: profiles[d.id].peak_gops.get("fp32", 0.0))
    profile = profiles[slowest.id]
    if runtime:
        profile = profile.model_copy(update={"runtimes": [runtime]})
    tables = {d.id: _table(d) for d in devices}
    measured = [i for i, t in tables.items() if t]
    notes += [f"device {i} has sent no operator latency table; the job used its reported "
              "profile" for i, t in tables.items() if not t]
    if len(devices) == 1:
        device_table = tables[devices[0].id]
    else:
        device_table = combine_tables([t for t in tables.values() if t]) or None
    terms = [i for i, t in tables.items() if t and any(k.startswith(TERM_PREFIX) for k in t)]
    notes += [f"device {i} sent no whole-model term with its table (an agent from before "
              "it); its prediction is the sum of its layers" for i in measured if i not in terms]
    info: dict[str, Any] = {
        "kind": "devices" if "tags" in target else "device",
        "device_ids": [d.id for d in devices], "runtime": runtime or None,
        "profile_of": slowest.id, "tables_from": measured, "terms_from": terms,
        "latency": "device_table" if device_table else "profile",
        "whole_model": (WHOLE_MODEL if terms else "layer sum") if device_table else None,
        "notes": notes}
    correction = None
    if device_table:
        correction, why = correction_for(session=session, device_ids=measured,
                                         model_id=line_of(job, session))
        info["correction"] = correction.to_dict() if correction is not None else None
        notes += why
    if "tags" in target:
        info["tags"] = target["tags"]
        info["combine"] = COMBINE
        if target.get("left_out"):
            info["left_out_at_submission"] = target["left_out"]
    own = {str(i): t for i, t in tables.items() if t}
    return Plan(profile, device_table, runtime or None, info, correction,
                own if device_table else {})


def built_for(plan: Plan, backend_name: str, onnx_path: Path) -> dict[str, Any]:
    """The version's ``built_for``: the profile's hardware class, the runtime the backend
    ``backend_name`` is among the target's runtimes (``openvino-cpu``), that runtime's
    version range on the worker, and the memory the file needs."""
    from cloud_service.services.compat import describe_build, memory_needed_mb, split_runtime
    from hadmc_core import backends

    names = [split_runtime(r)[0] for r in plan.profile.runtimes]
    runtime = next((r for r in names if backends.backend_name(r) == backend_name),
                   f"{backend_name}-cpu")
    runtimes = [runtime] if plan.runtime else [runtime, *[r for r in names if r != runtime]]
    return describe_build(profile=plan.profile, runtime=runtime,
                          runtime_version=backends.get(backend_name).version(),
                          runtimes=runtimes, memory_mb=memory_needed_mb(onnx_path))
