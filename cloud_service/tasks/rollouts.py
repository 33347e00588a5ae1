"""The rollout scheduler's runners: ``advance_rollouts_task`` (Celery beat, every
``HADMC_ROLLOUT_INTERVAL_SECONDS``) and the ``RolloutScheduler`` thread of ``hadmc serve``.
Both call ``services.scheduler.tick``, whose row locks make concurrent passes harmless."""

from __future__ import annotations

from celery import shared_task
from sqlalchemy.exc import OperationalError

from cloud_service.db import session_scope, utcnow
from cloud_service.settings import Settings
from cloud_service.tasks.periodic import Periodic

ADVANCE_TASK_NAME = "hadmc.advance_rollouts_task"


def advance_rollouts(settings: Settings) -> int:
    """One scheduler pass; returns the number of decisions taken."""
    from cloud_service.services.scheduler import tick

    with session_scope(settings.database_url) as s:
        return len(tick(s, utcnow()))


@shared_task(name=ADVANCE_TASK_NAME, ignore_result=True, autoretry_for=(OperationalError,),
             max_retries=1)
def advance_rollouts_task() -> int:
    """Idempotent: a pass over rollouts that have nothing to decide changes nothing."""
    from cloud_service.settings import get_settings

    return advance_rollouts(get_settings())


class RolloutScheduler(Periodic):
    lock_key = "hadmc:rollout-scheduler-lock"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.rollout_interval_seconds, "hadmc-rollouts")

    def work(self) -> None:
        advance_rollouts(self.settings)
