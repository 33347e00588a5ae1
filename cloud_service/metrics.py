"""Prometheus metrics: request counts/latency (ASGI middleware) and job states."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("hadmc_http_requests", "HTTP requests",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("hadmc_http_request_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10))


class JobStates:
    """Collects ``hadmc_jobs{state=...}`` from the database at scrape time."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self):  # type: ignore[no-untyped-def]
        from cloud_service.models import Job

        fam = GaugeMetricFamily("hadmc_jobs", "Jobs by state", labels=["state"])
        with self.app.state.sessionmaker() as s:
            for state, n in s.execute(select(Job.state, func.count()).group_by(Job.state)):
                fam.add_metric([state], n)
        yield fam


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
    return generate_latest(app.state.metrics.registry), CONTENT_TYPE_LATEST
