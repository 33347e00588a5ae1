"""Write-behind device heartbeats: the hottest path of the API.

Every device heartbeats every 30 s, so 10,000 devices are 333 requests a second. Doing an
``UPDATE`` and a ``COMMIT`` for each costs a database round trip and a thread hop per request.
Instead, a heartbeat whose credential was checked against the database in the last
``auth_ttl`` seconds is answered from memory: the latest heartbeat of each device waits in a
dict, and a flusher thread writes all of them in one ``executemany`` every ``flush_seconds``.

A beat names the versions the device runs, one per model (``current_version_id`` for an
agent that runs one model); the flush writes them to the device's deployments. A batched
beat never overwrites the version that a later update report set (the flush checks
``update_reports``), so a beat sent just before an update cannot move the device back.
What that trades, on purpose: ``last_seen_at`` in the database lags by up to
``flush_seconds`` (reads through this process flush first, so one process reads its own
writes); a device revoked while its credential is cached keeps heartbeating for at most
``auth_ttl`` seconds (the flush skips revoked rows, so nothing is written for it); heartbeats
accepted in the last ``flush_seconds`` before the process is killed are lost (a clean stop
flushes). A heartbeat only records liveness, so none of these loses a user's data.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Boolean, Table, bindparam, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud_service import security
from cloud_service.db import utcnow
from cloud_service.models import Device
from cloud_service.services import deployments

log = logging.getLogger(__name__)
_devices = cast(Table, Device.__table__)


@dataclass
class _Beat:
    at: datetime
    versions: tuple[int, ...]
    status: str | None
    multi: bool


class HeartbeatRecorder:
    def __init__(self, maker: sessionmaker[Session], flush_seconds: float,
                 auth_ttl: float = 60.0) -> None:
        self.maker, self.flush_seconds, self.auth_ttl = maker, flush_seconds, auth_ttl
        self._auth: dict[tuple[int, str], float] = {}  # (device id, credential hash) -> until
        #: versions are immutable: once seen, always valid (version id -> model line)
        self._versions: dict[int, str] = {}
        self._pending: dict[int, _Beat] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the request path -------------------------------------------------------------------
    def record_cached(self, device_id: int, credential: str, claims: dict[int, str | None],
                      status: str | None, multi: bool = False) -> datetime | None:
        """Accept a heartbeat without I/O when the credential and the versions (``{version
        id: model line or None}``, what the device runs) are known; None when the
        database must be asked (see ``record``)."""
        key = (device_id, security.hash_token(credential))
        if self._auth.get(key, 0.0) < time.monotonic():
            return None
        for vid, model in claims.items():
            if vid not in self._versions or model not in (None, self._versions[vid]):
                return None
        return self._stash(device_id, tuple(claims), status, multi)

    def record(self, session: Session, device_id: int, credential: str,
               claims: dict[int, str | None], status: str | None, multi: bool = False
               ) -> datetime | None:
        """Check the credential (and the versions) in the database, then accept. None when
        no live device has this id and credential; InvalidInputError for an unknown
        version or one of another model than named."""
        digest = security.hash_token(credential)
        found = session.scalar(select(Device.id).where(
            Device.id == device_id, Device.credential_hash == digest,
            Device.revoked_at.is_(None)))
        if found is None:
            return None
        self._versions.update(deployments.check_claims(session, claims))
        self._auth[(device_id, digest)] = time.monotonic() + self.auth_ttl
        return self._stash(device_id, tuple(claims), status, multi)

    def _stash(self, device_id: int, versions: tuple[int, ...], status: str | None,
               multi: bool) -> datetime:
        now = utcnow()
        with self._lock:
            old = self._pending.get(device_id)
            if old is not None:
                status = old.status if status is None else status
                multi = multi or old.multi
            self._pending[device_id] = _Beat(now, versions, status, multi)
        return now

    # -- the write-behind -------------------------------------------------------------------
    def flush(self) -> int:
        """Write every pending heartbeat; returns how many devices were written."""
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return 0
            params: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
            for dev, b in batch.items():
                row = {"b_id": dev, "last_seen_at": b.at, "b_multi": b.multi}
                if b.status is not None:
                    row["status"] = b.status
                params[b.status is not None].append(row)
            versions = [{"b_id": dev, "b_vid": vid, "b_at": b.at}
                        for dev, b in batch.items() for vid in b.versions]
            try:
                with self.maker() as session:
                    for with_status, rows in params.items():
                        if rows:
                            session.execute(device_statement(with_status), rows)
                    deployments.confirm_versions(session, versions)
                    session.commit()
            except Exception:
                with self._lock:  # keep them for the next try; newer beats win
                    self._pending = {**batch, **self._pending}
                raise
            return len(batch)

    def forget(self, device_id: int) -> None:
        """Drop a device's cached credentials (it was revoked through this process)."""
        with self._lock:
            for key in [k for k in self._auth if k[0] == device_id]:
                del self._auth[key]

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # the database may be down for a moment: keep the beats
                log.warning("heartbeat flush failed; retrying", exc_info=True)

    def start(self) -> None:
        if self.flush_seconds > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="heartbeat-flush",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.flush()
        except Exception:
            log.warning("final heartbeat flush failed", exc_info=True)


def device_statement(with_status: bool) -> Any:
    """Liveness (and status) of a live device; ``b_multi`` marks an agent that reports
    per-model versions (it stays marked). The versions go to ``deployments``."""
    values: dict[str, Any] = {"last_seen_at": bindparam("last_seen_at"),
                              "multi_model": or_(_devices.c.multi_model,
                                                 bindparam("b_multi", type_=Boolean))}
    if with_status:
        values["status"] = bindparam("status")
    return (update(_devices).where(_devices.c.id == bindparam("b_id"),
                                   _devices.c.revoked_at.is_(None)).values(**values))
