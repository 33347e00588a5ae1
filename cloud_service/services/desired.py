"""What a device should run (its desired version, with a signed rollback order when that
is lower than a version it accepted) and what it reports back after an update."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_service.db import utcnow
from cloud_service.errors import InvalidInputError
from cloud_service.models import (
    Device,
    Model,
    ModelVersion,
    Rollout,
    RolloutDevice,
    UpdateReport,
)
from cloud_service.services import deployments
from cloud_service.services.compat import runtimes_for
from cloud_service.services.publish import model_line

#: Rollback orders are issued on the hour (so the answer and its ETag stay stable for an
#: hour) and expire a day after.
ORDER_BUCKET_SECONDS, ORDER_TTL_SECONDS = 3600, 86400
NOTHING: dict[str, Any] = {"version_id": None, "model_id": None, "number": None,
                           "onnx_hash": None, "onnx_size": None, "rollback_order": None,
                           "hold": False, "runtimes": None}
#: Rollout rows whose device should run the version it had before the rollout.
GO_BACK = ("failed", "cancelled", "rolled_back")
#: Update phases that leave the device running the reported version, committed.
COMMITTED = ("done", "rollback")


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sign_order(order: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    return {"order": order, "signature": key.sign(canonical(order)).hex()}


def _latest_rows(session: Session, device_id: int) -> list[tuple[RolloutDevice, Rollout, int]]:
    """Per model (by model id): the device's row in the latest rollout of a version of that
    model that reached it (neither pending nor skipped), with the model's id."""
    latest = (select(ModelVersion.model_id, func.max(Rollout.id).label("rid"))
              .select_from(RolloutDevice).join(Rollout)
              .join(ModelVersion, ModelVersion.id == Rollout.version_id)
              .where(RolloutDevice.device_id == device_id,
                     RolloutDevice.status.not_in(("pending", "skipped")))
              .group_by(ModelVersion.model_id).subquery())
    rows = session.execute(
        select(RolloutDevice, Rollout, latest.c.model_id)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .join(latest, latest.c.rid == Rollout.id)
        .where(RolloutDevice.device_id == device_id)
        .order_by(latest.c.model_id)).all()
    return [(rd, rollout, model_id) for rd, rollout, model_id in rows]


def _highest_accepted(session: Session, device_id: int, model_id: int,
                      running: int | None) -> int:
    """The highest version number of this model the device reported running."""
    reported = session.scalar(
        select(func.max(ModelVersion.number)).join(UpdateReport,
                                                     UpdateReport.version_id == ModelVersion.id)
        .where(UpdateReport.device_id == device_id, UpdateReport.ok.is_(True),
               ModelVersion.model_id == model_id)) or 0
    current = session.get(ModelVersion, running) if running else None
    if current is not None and current.model_id == model_id:
        reported = max(reported, current.number)
    return reported


def _target(running: int | None, rd: RolloutDevice, rollout: Rollout
            ) -> tuple[int | None, bool]:
    """(version id the device should run of the rollout's model, hold): the rollout's
    version while it is assigned or succeeded; while the rollout is paused an assigned
    device holds what it runs (``running``); after failure, cancellation or rollback the
    version it had before."""
    if rd.status == "assigned" and rollout.state == "paused":
        return running, True
    if rd.status == "succeeded" or (rd.status == "assigned" and rollout.state == "active"):
        return rollout.version_id, False
    return rd.from_version_id, False


def _entry(session: Session, dev: Device, model_id: int, running: int | None,
           rd: RolloutDevice, rollout: Rollout, key: Ed25519PrivateKey, now: datetime | None
           ) -> dict[str, Any]:
    """What the device should run of one model (``models[]`` of the desired state)."""
    target_id, hold = _target(running, rd, rollout)
    ver = session.get(ModelVersion, target_id) if target_id is not None else None
    base = {"model": f"model-{model_id}", "model_id": model_id, "rollout_id": rollout.id,
            "hold": hold}
    if ver is None:
        return {**base, **{k: v for k, v in NOTHING.items() if k not in base}}
    order = None
    if not hold and ver.number < _highest_accepted(session, dev.id, model_id, running):
        issued = int((now or utcnow()).timestamp()) // ORDER_BUCKET_SECONDS \
            * ORDER_BUCKET_SECONDS
        order = sign_order({"kind": "rollback", "device_id": dev.id, "model": model_line(ver),
                            "version": ver.number, "version_id": ver.id, "issued": issued,
                            "expires": issued + ORDER_TTL_SECONDS}, key)
    return {**base, "version_id": ver.id, "number": ver.number, "onnx_hash": ver.onnx_hash,
            "onnx_size": ver.onnx_size, "rollback_order": order,
            # the runtimes it may run on, the one it was built with first (the agent runs
            # it with the first it has)
            "runtimes": runtimes_for(ver, dev.profile)}


def desired_state(*, session: Session, device_id: int, key: Ed25519PrivateKey,
                  now: datetime | None = None) -> dict[str, Any] | None:
    """The body of ``GET /v1/devices/{id}/desired`` (None when the device does not exist).

    Per model, the latest rollout of that model that reached the device decides
    (``_target``); ``hold: true`` tells the agent to stay on what it runs of that model (a
    paused rollout). ``models`` lists every model a rollout names for the device; the
    top-level fields repeat the entry of its primary model (its first deployment, or,
    before it has any, the model of the latest rollout), which is all an agent that runs
    one model reads."""
    dev = session.get(Device, device_id)
    if dev is None:
        return None
    running = {d.model_id: d.current_version_id for d in dev.deployments}
    found = _latest_rows(session, device_id)
    names = dict(session.execute(select(Model.id, Model.name).where(
        Model.id.in_([m for _, _, m in found]))).all()) if found else {}
    entries = [{**_entry(session, dev, model_id, running.get(model_id), rd, rollout, key,
                         now), "name": names.get(model_id)}
               for rd, rollout, model_id in found]
    primary = dev.primary
    if primary is not None:
        top = next((e for e in entries if e["model_id"] == primary.model_id), None)
    else:
        top = max(entries, key=lambda e: e["rollout_id"], default=None)
    head: dict[str, Any] = {**NOTHING, "rollout_id": None}
    if top is not None:
        head = {k: top[k] for k in (*NOTHING, "rollout_id")}
        if top["version_id"] is None:
            head["model_id"] = None
    return {**head, "models": entries}


def _report_row(session: Session, device_id: int, version_id: int,
                rollout_id: int | None) -> tuple[RolloutDevice, Rollout] | None:
    query = (select(RolloutDevice, Rollout).join(Rollout)
             .where(RolloutDevice.device_id == device_id))
    if rollout_id is not None:
        query = query.where(Rollout.id == rollout_id)
    else:
        query = query.where((Rollout.version_id == version_id)
                            | (RolloutDevice.from_version_id == version_id))
    row = session.execute(query.order_by(Rollout.id.desc()).limit(1)).first()
    return (row[0], row[1]) if row is not None else None


def _update_rollout_row(rd: RolloutDevice, rollout: Rollout, report: UpdateReport,
                        now: datetime) -> None:
    """Success counts only once the device committed the rollout's version (after its
    health window) while the row is still assigned: a report that arrives after an abort
    or a cancellation changes nothing."""
    if report.version_id == rollout.version_id and rd.status == "assigned" \
            and rollout.state in ("active", "paused"):
        if report.ok and report.phase in COMMITTED:
            rd.status, rd.reason = "succeeded", None
            rd.p50_ms, rd.p95_ms = report.p50_ms, report.p95_ms
        elif report.ok and report.phase == "probation":
            rd.reason = "switched; on probation (health window)"
        elif not report.ok:
            rd.status, rd.reason = "failed", f"{report.phase}: {report.reason or 'no reason'}"
        rd.updated_at = now
    elif report.version_id == rd.from_version_id and rd.status in GO_BACK:
        rd.reason = (f"{rd.reason}; " if rd.reason else "") + \
            (f"back on version {report.version_id}" if report.ok
             else f"going back failed at {report.phase}: {report.reason or 'no reason'}")
        rd.updated_at = now


def report_update(*, session: Session, device_id: int, report: dict[str, Any]
                  ) -> UpdateReport | None:
    """Store an update report, move the device's rollout row and its deployment of the
    version's model. The device runs the reported version after ``probation`` (switched,
    health window running), ``done`` or an obeyed ``rollback`` (committed); after a failed
    health window it went back. ``model`` (optional; agents that run one model leave it
    out) must be the version's model line."""
    dev = session.get(Device, device_id)
    if dev is None:
        return None
    report = dict(report)
    model = report.pop("model", None)
    ver = session.get(ModelVersion, report["version_id"])
    if ver is None:
        raise InvalidInputError(f"model version {report['version_id']} does not exist")
    if model is not None and model != model_line(ver):
        raise InvalidInputError(f"model version {ver.id} is a version of {model_line(ver)}, "
                                f"not of {model}")
    if report.get("rollout_id") is not None and \
            session.get(Rollout, report["rollout_id"]) is None:
        raise InvalidInputError(f"rollout {report['rollout_id']} does not exist")
    now = utcnow()
    row = UpdateReport(device_id=device_id, created_at=now, **report)
    session.add(row)
    found = _report_row(session, device_id, ver.id, row.rollout_id)
    if found is not None:
        _update_rollout_row(found[0], found[1], row, now)
    dep = deployments.get_or_create(session, device_id, ver.model_id, now)
    if row.ok and row.phase in (*COMMITTED, "probation") and dep.current_version_id != ver.id:
        dep.previous_version_id, dep.current_version_id = dep.current_version_id, ver.id
    elif not row.ok and row.phase == "health" and dep.current_version_id == ver.id:
        dep.current_version_id, dep.previous_version_id = dep.previous_version_id, None
    dep.phase, dep.updated_at = row.phase, now
    dev.last_seen_at = now
    session.flush()
    return row
