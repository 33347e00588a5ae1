"""Celery application and tasks. Tasks take ids, reload rows and claim them atomically.

``celery -A cloud_service.tasks worker`` (or ``hadmc worker``) runs them; the API only
sends messages by task name, so it never imports the pipeline.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

TASK_NAME = "hadmc.compress_model_task"


@lru_cache(maxsize=4)
def make_celery(broker_url: str, queue: str, rollout_interval: float = 5.0) -> Celery:
    app = Celery("hadmc", broker=broker_url,
                 include=["cloud_service.tasks.compress", "cloud_service.tasks.rollouts"])
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json", accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True, task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # Redis keeps unacked messages this long before redelivering them; the reconciler
        # handles lost messages and dead workers much sooner (see tasks.reconcile).
        broker_transport_options={"visibility_timeout": 6 * 3600},
        # `hadmc worker --beat`: the rollout scheduler as a periodic task (expires so a
        # backlog after an outage is not replayed).
        beat_schedule={"advance-rollouts": {
            "task": "hadmc.advance_rollouts_task", "schedule": rollout_interval,
            "options": {"queue": queue, "expires": max(rollout_interval, 1.0)}}}
        if rollout_interval > 0 else {},
    )
    return app


def celery_app_from_settings() -> Celery:
    from cloud_service.settings import get_settings

    settings = get_settings()
    if not settings.broker_url:
        raise RuntimeError("HADMC_BROKER_URL is not set; `hadmc worker` needs a broker "
                           "(e.g. redis://127.0.0.1:6379/0), or run `hadmc serve` alone to "
                           "use the embedded worker")
    return make_celery(settings.broker_url, settings.queue, settings.rollout_interval_seconds)


def __getattr__(name: str) -> Celery:  # `celery -A cloud_service.tasks` looks up `app`
    if name in ("app", "celery"):
        return celery_app_from_settings()
    raise AttributeError(name)
