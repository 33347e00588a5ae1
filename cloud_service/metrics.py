"""Prometheus metrics for ``GET /metrics``.

Two kinds, so that every answer is right whichever API process serves the scrape:

- Fleet-wide facts (devices, rollouts, update reports, jobs, the broker queue) are read from
  the database and the broker at scrape time by ``FleetCollector``; any process answers
  the same.
- Counters of what a process did (HTTP requests and their latency, bytes of model files
  sent) live in the process. With several worker processes (``hadmc serve --workers N``)
  they are kept in prometheus_client's multiprocess directory
  (``PROMETHEUS_MULTIPROC_DIR``) and summed over the processes at every scrape.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select

from cloud_service.errors import AuthenticationError
from cloud_service.settings import Settings

log = logging.getLogger(__name__)
#: What a device downloads: the whole ``model.onnx``, or a delta from a version it holds.
DOWNLOAD_KINDS = ("full", "delta")


class Metrics:
    """The process's instruments, and the registry that ``/metrics`` exposes."""

    def __init__(self, multiproc_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("hadmc_http_requests", "HTTP requests",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("hadmc_http_request_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10))
        self.download_bytes = Counter(
            "hadmc_download_bytes", "Bytes of model files sent to devices by the API "
            "processes since they started, by kind (full model.onnx or delta)", ["kind"],
            registry=self.registry)
        for kind in DOWNLOAD_KINDS:
            self.download_bytes.labels(kind)
        if multiproc_dir is not None:
            # Each process writes its counters to files there; this reads all of them.
            self.exposed = CollectorRegistry()
            MultiProcessCollector(self.exposed, path=str(multiproc_dir))
        else:
            self.exposed = self.registry

    def expose(self, collector: Any) -> None:
        """Add a collector computed at scrape time (from shared state, not this process)."""
        self.exposed.register(collector)


def _source_up(up: dict[str, bool]) -> GaugeMetricFamily:
    fam = GaugeMetricFamily("hadmc_metrics_source_up", "1 when the last scrape could read "
                            "this source (database, broker), else 0", labels=["source"])
    for source, ok in up.items():
        fam.add_metric([source], 1 if ok else 0)
    return fam


class FleetCollector:
    """Fleet-wide gauges and counters read from the database (and the broker's queue) at
    scrape time, so that they are the same whichever API process answers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._redis: Any = None

    def collect(self) -> Iterator[Metric]:
        settings: Settings = self.app.state.settings
        up: dict[str, bool] = {}
        try:
            yield from self._database(settings)
            up["database"] = True
        except Exception as e:  # a scrape must still answer with what it has
            log.warning("metrics: cannot read the database: %s", e)
            up["database"] = False
        if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
            depth = self._queue_depth(settings)
            up["broker"] = depth is not None
            if depth is not None:
                fam = GaugeMetricFamily("hadmc_queue_depth", "Messages waiting in the "
                                        "broker's job queue", labels=["queue"])
                fam.add_metric([settings.queue], depth)
                yield fam
        yield _source_up(up)

    def _database(self, settings: Settings) -> Iterator[Metric]:
        from cloud_service.db import utcnow
        from cloud_service.models import Device, Job
        from cloud_service.services import fleet, jobs

        families: list[Metric] = []
        with self.app.state.sessionmaker() as s:
            fam = GaugeMetricFamily("hadmc_jobs", "Jobs by state", labels=["state"])
            for state, n in s.execute(select(Job.state, func.count()).group_by(Job.state)):
                fam.add_metric([state], n)
            families.append(fam)
            stages = SummaryMetricFamily(
                "hadmc_job_stage_seconds", "Seconds finished jobs spent in each pipeline "
                "stage (jobs.timings)", labels=["stage"])
            for stage, (n, seconds) in sorted(jobs.stage_seconds(session=s).items()):
                stages.add_metric([stage], n, seconds)
            families.append(stages)
            counts = fleet.fleet_counts(session=s, now=utcnow(),
                                        offline_after_seconds=fleet.offline_threshold(settings))
            families += _device_families(counts)
            sent = s.scalar(select(func.coalesce(func.sum(Device.bytes_downloaded), 0)))
            families.append(CounterMetricFamily(
                "hadmc_devices_downloaded_bytes", "Bytes of model files (model.onnx and "
                "deltas) sent to devices, all of them ever (devices.bytes_downloaded)",
                value=int(sent or 0)))
            families += _rollout_families(fleet.rollout_counts(session=s),
                                          fleet.open_rollout_progress(session=s))
            reports = CounterMetricFamily(
                "hadmc_update_reports", "Update reports from devices, by phase and outcome",
                labels=["phase", "ok"])
            got = fleet.update_report_counts(session=s)
            for phase in sorted({*fleet.PHASES, *(p for p, _ in got)}):
                for ok in (True, False):
                    reports.add_metric([phase, str(ok).lower()], got.get((phase, ok), 0))
            families.append(reports)
        yield from families

    def _queue_depth(self, settings: Settings) -> int | None:
        """Messages in the job queue (all of kombu's priority lists); None when unreadable."""
        import redis

        try:
            if self._redis is None:
                self._redis = redis.Redis.from_url(settings.broker_url or "", socket_timeout=2,
                                                   socket_connect_timeout=2)
            pipe = self._redis.pipeline(transaction=False)
            for key in [settings.queue] + [f"{settings.queue}\x06\x16{p}" for p in range(1, 10)]:
                pipe.llen(key)
            return int(sum(pipe.execute()))
        except redis.RedisError as e:
            log.warning("metrics: cannot read the broker's queue: %s", e)
            return None


def _device_families(counts: dict[str, Any]) -> list[Metric]:
    states = GaugeMetricFamily("hadmc_devices", "Devices (not revoked) by state: online, "
                               "offline, updating, failed (services/fleet.py)",
                               labels=["state"])
    for state, n in counts["states"].items():
        states.add_metric([state], n)
    versions = GaugeMetricFamily("hadmc_devices_by_version", "Devices (not revoked) by the "
                                 "version they run of each model",
                                 labels=["model_id", "version_id"])
    for v in counts["versions"]:
        versions.add_metric([str(v["model_id"]), str(v["version_id"])], v["devices"])
    return [states, versions]


def _rollout_families(states: dict[str, int], progress: list[dict[str, Any]]) -> list[Metric]:
    rollouts = GaugeMetricFamily("hadmc_rollouts", "Rollouts by state", labels=["state"])
    for state, n in states.items():
        rollouts.add_metric([state], n)
    devices = GaugeMetricFamily("hadmc_rollout_devices", "Devices of open (active or paused) "
                                "rollouts by wave and status",
                                labels=["rollout_id", "wave", "status"])
    wave = GaugeMetricFamily("hadmc_rollout_current_wave", "The wave an open rollout is at "
                             "(0 = the first)", labels=["rollout_id", "state"])
    for r in progress:
        rid = str(r["rollout_id"])
        wave.add_metric([rid, r["state"]], r["current_wave"])
        for number, by_status in sorted(r["waves"].items()):
            for status, n in by_status.items():
                devices.add_metric([rid, str(number), status], n)
    return [rollouts, devices, wave]


def check_token(settings: Settings, authorization: str | None) -> None:
    """With ``HADMC_METRICS_TOKEN`` set, only ``Authorization: Bearer <it>`` may scrape."""
    if settings.metrics_token is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    expected = settings.metrics_token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise AuthenticationError("/metrics needs `Authorization: Bearer <token>` with the "
                                  "value of HADMC_METRICS_TOKEN")


class MetricsMiddleware:
    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def _send(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - t0)


def render(app: Any) -> tuple[bytes, str]:
    return generate_latest(app.state.metrics.exposed), CONTENT_TYPE_LATEST


def multiprocess_dir(configured: Path | None, workers: int) -> tuple[Path | None, bool]:
    """The directory where ``hadmc serve``'s worker processes keep their counters, emptied
    of an earlier run's files, and whether it was made here (to be removed at the end).
    One process needs none; several get a fresh temporary one unless one is configured."""
    import os
    import tempfile

    if configured is None and workers == 1:
        return None, False
    if configured is None:
        path = Path(tempfile.mkdtemp(prefix="hadmc-metrics-"))
        # prometheus_client in the worker processes (started after this) reads it there.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
        return path, True
    configured.mkdir(parents=True, exist_ok=True)
    for stale in configured.glob("*.db"):
        stale.unlink()
    return configured, False
