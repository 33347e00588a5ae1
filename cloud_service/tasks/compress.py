"""``compress_model_task(job_id)``: run one compression job on a Celery worker."""

from __future__ import annotations

from celery import shared_task
from sqlalchemy.exc import OperationalError

from cloud_service.tasks import TASK_NAME


@shared_task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True,
             autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def compress_model_task(job_id: int) -> str:
    """Idempotent: returns early when the job is gone, finished or owned by a live worker."""
    from cloud_service.settings import get_settings
    from cloud_service.tasks.runner import execute_job

    return execute_job(int(job_id), get_settings())
