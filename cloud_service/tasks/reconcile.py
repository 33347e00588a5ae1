"""The reconciler: no job is lost when a broker message vanishes or a worker dies.

- A running job whose worker stopped heartbeating is queued again (or failed, with the
  reason, once it has used its attempts).
- A queued job whose message is in neither the broker queue nor its unacked set (Redis was
  restarted, the publish failed) is enqueued again.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from sqlalchemy import select, update

from cloud_service.db import session_scope, utcnow
from cloud_service.models import Job
from cloud_service.settings import Settings
from cloud_service.tasks.dispatch import enqueue_job
from cloud_service.tasks.periodic import Periodic

log = logging.getLogger(__name__)
LOCK_KEY = "hadmc:reconciler-lock"


def broker_task_ids(settings: Settings) -> set[str] | None:
    """Task ids waiting or reserved in a Redis broker; None when they cannot be read."""
    if not settings.broker_url or not settings.broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    ids: set[str] = set()
    try:
        r = redis.Redis.from_url(settings.broker_url, socket_timeout=5)
        keys = [settings.queue] + [k.decode() for k in r.scan_iter(f"{settings.queue}\x06\x16*")]
        raws = [raw for key in keys for raw in r.lrange(key, 0, -1)]
        for raw in raws:
            ids.add(json.loads(raw)["headers"]["id"])
        for raw in r.hvals("unacked"):
            ids.add(json.loads(raw)[0]["headers"]["id"])
    except (redis.RedisError, ValueError, KeyError, IndexError, TypeError) as e:
        log.warning("cannot read the broker's queue (%s); requeueing by age only", e)
        return None
    return ids


def reconcile(settings: Settings) -> dict[str, int]:
    now = utcnow()
    stale = now - timedelta(seconds=settings.job_stale_seconds)
    counts = {"requeued_dead": 0, "failed_dead": 0, "reenqueued": 0}
    to_enqueue: list[int] = []
    with session_scope(settings.database_url) as s:
        for job in s.scalars(select(Job).where(Job.state == "running",
                                               Job.heartbeat_at < stale)):
            dead = f"worker {job.worker} stopped sending heartbeats"
            if job.attempts >= settings.job_max_attempts:
                values = {"state": "failed", "finished_at": now,
                          "error": f"{dead}; gave up after {job.attempts} attempts"}
                counts["failed_dead"] += 1
            else:
                values = {"state": "queued", "worker": None, "enqueued_at": None,
                          "task_id": None, "error": f"attempt {job.attempts}: {dead}; retrying"}
                counts["requeued_dead"] += 1
                to_enqueue.append(job.id)
            s.execute(update(Job).where(Job.id == job.id, Job.state == "running",
                                        Job.worker == job.worker).values(**values))
        grace = now - timedelta(seconds=settings.requeue_grace_seconds)
        queued = list(s.execute(select(Job.id, Job.task_id, Job.enqueued_at)
                                .where(Job.state == "queued")))
    known = broker_task_ids(settings) if queued else set()
    for job_id, task_id, enqueued_at in queued:
        if job_id in to_enqueue:
            continue
        waited = enqueued_at is None or enqueued_at < grace
        missing = known is None or task_id not in known
        if waited and missing and (settings.broker_url or enqueued_at is None):
            to_enqueue.append(job_id)
            counts["reenqueued"] += 1
    for job_id in to_enqueue:
        enqueue_job(job_id, settings)
    if any(counts.values()):
        log.info("reconciler: %s", counts)
    return counts


class Reconciler(Periodic):
    """Runs ``reconcile`` periodically; with Redis, one process at a time holds a lock."""

    lock_key = LOCK_KEY

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.reconcile_interval_seconds, "hadmc-reconciler")

    def work(self) -> None:
        reconcile(self.settings)
