"""A background thread of ``hadmc serve`` that runs one operation periodically; with a
Redis broker, one process at a time (a short-lived lock per period)."""

from __future__ import annotations

import logging
import threading

from cloud_service.settings import Settings

log = logging.getLogger(__name__)


class Periodic(threading.Thread):
    """Subclasses set ``lock_key`` and implement ``work``."""

    lock_key = "hadmc:periodic-lock"

    def __init__(self, settings: Settings, interval: float, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.settings, self.interval, self.stopping = settings, interval, threading.Event()

    def work(self) -> None:
        raise NotImplementedError

    def _may_run(self) -> bool:
        if not self.settings.broker_url or not self.settings.broker_url.startswith("redis"):
            return True
        import redis

        r = redis.Redis.from_url(self.settings.broker_url, socket_timeout=5)
        ttl = max(1, int(self.interval * 0.9))
        return bool(r.set(self.lock_key + ":" + self.settings.queue, "1", nx=True, ex=ttl))

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                if self._may_run():
                    self.work()
            except Exception as e:  # the loop must survive a database or broker outage
                log.warning("%s pass failed: %s", self.name, e)

    def stop(self) -> None:
        self.stopping.set()
