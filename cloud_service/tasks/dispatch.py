"""Enqueue a committed job: a Celery message (id only) or a poke to the embedded worker."""

from __future__ import annotations

import logging

from sqlalchemy import update

from cloud_service.db import session_scope, utcnow
from cloud_service.models import Job
from cloud_service.settings import Settings

log = logging.getLogger(__name__)
_embedded_listeners: list = []


def add_embedded_listener(fn) -> None:  # type: ignore[no-untyped-def]
    _embedded_listeners.append(fn)


def remove_embedded_listener(fn) -> None:  # type: ignore[no-untyped-def]
    if fn in _embedded_listeners:
        _embedded_listeners.remove(fn)


def enqueue_job(job_id: int, settings: Settings) -> bool:
    """Send the job; False when the broker is down (the reconciler sends it later)."""
    task_id = None
    if settings.broker_url:
        from cloud_service.tasks import TASK_NAME, make_celery

        try:
            res = make_celery(settings.broker_url, settings.queue).send_task(
                TASK_NAME, args=[job_id], queue=settings.queue,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})
            task_id = res.id
        except Exception as e:  # kombu raises many kinds; the row is safe in the database
            log.warning("could not enqueue job %s (%s); the reconciler will retry", job_id, e,
                        extra={"job_id": job_id})
            return False
    else:
        for fn in list(_embedded_listeners):
            fn()
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(task_id=task_id,
                                                             enqueued_at=utcnow()))
    return True
