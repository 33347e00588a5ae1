"""The pipeline's progress callback, stored on the job row (throttled), plus a heartbeat
thread and a capture of the pipeline's log lines for the job's log tail."""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from sqlalchemy import update

from cloud_service.db import get_sessionmaker, utcnow
from cloud_service.errors import JobCancelledError
from cloud_service.models import Job
from cloud_service.settings import Settings

log = logging.getLogger(__name__)
WRITE_EVERY_S = 1.0


class _Capture(logging.Handler):
    def __init__(self, thread_id: int, lines: collections.deque) -> None:
        super().__init__(logging.INFO)
        self.thread_id, self.lines = thread_id, lines
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread_id:
            self.lines.append(self.format(record))


class JobProgress:
    """Callable as ``fn(stage, done, total)``; raises JobCancelledError after a cancel."""

    def __init__(self, job_id: int, worker: str, settings: Settings) -> None:
        self.job_id, self.worker, self.settings = job_id, worker, settings
        self.lines: collections.deque[str] = collections.deque(maxlen=60)
        self.timings: dict[str, float] = {}
        self.stage: str | None = None
        self.done = self.total = 0
        self._stage_t0 = time.monotonic()
        self._last_write = 0.0
        self._cancel = threading.Event()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True,
                                      name=f"hadmc-job-{job_id}-heartbeat")
        self._capture = _Capture(threading.get_ident(), self.lines)
        self._logger = logging.getLogger("hadmc_core")

    def start(self) -> None:
        self._logger.addHandler(self._capture)
        if self._logger.level == logging.NOTSET or self._logger.level > logging.INFO:
            self._logger.setLevel(logging.INFO)
        self._beat.start()

    def stop(self) -> None:
        self._stop.set()
        self._logger.removeHandler(self._capture)
        self._beat.join(timeout=5)

    def tail(self) -> str:
        return "\n".join(self.lines)

    def final(self) -> dict[str, Any]:
        """Columns for the job's last write (the throttle may have skipped the latest)."""
        self.flush_timings()
        return {"done": self.done, "total": self.total, "timings": dict(self.timings),
                "log_tail": self.tail()}

    def flush_timings(self) -> None:
        if self.stage is not None:
            spent = time.monotonic() - self._stage_t0
            self.timings[self.stage] = round(self.timings.get(self.stage, 0.0) + spent, 3)
            self._stage_t0 = time.monotonic()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._cancel.is_set():
            raise JobCancelledError(f"job {self.job_id} cancelled")
        self.done, self.total = int(done), int(total)
        changed = stage != self.stage
        if changed:
            self.flush_timings()
            self.stage = stage
            self.lines.append(f"stage {stage} started")
        now = time.monotonic()
        if changed or now - self._last_write >= WRITE_EVERY_S or (total and done >= total):
            self._last_write = now
            self._write(stage=stage, done=int(done), total=int(total), timings=dict(self.timings),
                        log_tail=self.tail())

    def _write(self, **values: Any) -> None:
        try:
            with get_sessionmaker(self.settings.database_url)() as s:
                s.execute(update(Job).where(Job.id == self.job_id, Job.worker == self.worker)
                          .values(heartbeat_at=utcnow(), **values))
                flag = s.get(Job, self.job_id)
                if flag is not None and flag.cancel_requested:
                    self._cancel.set()
                s.commit()
        except Exception as e:  # progress must never kill the job; the heartbeat retries
            log.warning("job %s: progress not stored: %s", self.job_id, e)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.job_heartbeat_seconds):
            self._write()
