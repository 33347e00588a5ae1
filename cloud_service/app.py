"""``create_app()``: the FastAPI application (``uvicorn --factory ...:create_app``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.exc import IntegrityError

from cloud_service import security, ui
from cloud_service.api import guard, openapi, problems
from cloud_service.api.routes import ROUTERS, devices
from cloud_service.db import get_engine, get_sessionmaker, session_scope
from cloud_service.metrics import FleetCollector, Metrics, MetricsMiddleware
from cloud_service.migrate import check_schema
from cloud_service.s3store import make_store
from cloud_service.services.auth import sync_admin_token
from cloud_service.services.heartbeats import HeartbeatRecorder
from cloud_service.settings import Settings, get_settings

log = logging.getLogger(__name__)

DESCRIPTION = """Compress models for the hardware they run on and keep a fleet of edge
devices on the right version. Authenticate with `Authorization: Bearer <token>`: a user API
token (`hadmc token create`) or, for a device's own endpoints, its device credential."""


def _start_background(app: FastAPI, settings: Settings) -> list:
    from cloud_service.tasks.dispatch import add_embedded_listener
    from cloud_service.tasks.reconcile import Reconciler
    from cloud_service.tasks.rollouts import RolloutScheduler
    from cloud_service.tasks.runner import EmbeddedWorker

    threads: list = []
    if not settings.broker_url and settings.embedded_worker:
        worker = EmbeddedWorker(settings)
        add_embedded_listener(worker.wake.set)
        threads.append(worker)
    if settings.reconcile_interval_seconds > 0:
        threads.append(Reconciler(settings))
    if settings.rollout_interval_seconds > 0:
        threads.append(RolloutScheduler(settings))
    for t in threads:
        t.start()
    return threads


def _sync_admin_token(settings: Settings) -> None:
    """``HADMC_ADMIN_TOKEN`` authenticates while it is set, to its current value only."""
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    try:
        with session_scope(settings.database_url) as s:
            sync_admin_token(session=s, token=token)
    except IntegrityError:  # another worker process of this server seeded it first
        log.info("HADMC_ADMIN_TOKEN was seeded by another process")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        check_schema(settings.database_url, app.state.engine)  # says: run `hadmc db upgrade`
        key = security.ensure_signing_key(settings.signing_key_file)
        app.state.signing_key = key  # never served; only its public half is
        app.state.public_key_pem = security.public_key_pem(key)
        _sync_admin_token(settings)
        threads = _start_background(app, settings)
        if app.state.heartbeats is not None:
            app.state.heartbeats.start()
            threads.append(app.state.heartbeats)
        yield
        from cloud_service.tasks.dispatch import remove_embedded_listener

        for t in threads:
            t.stop()
            if hasattr(t, "wake"):
                remove_embedded_listener(t.wake.set)

    app = FastAPI(title="HAD-MC cloud service", version="1", description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = get_engine(settings.database_url)
    app.state.sessionmaker = get_sessionmaker(settings.database_url)
    app.state.store = make_store(settings)
    app.state.heartbeats = (HeartbeatRecorder(app.state.sessionmaker,
                                              settings.heartbeat_flush_seconds)
                            if settings.heartbeat_flush_seconds > 0 else None)
    app.state.metrics = Metrics(settings.prometheus_multiproc_dir)
    app.state.metrics.expose(FleetCollector(app))
    app.state.enroll_limiter = devices.RateLimiter()
    problems.install(app)
    openapi.install(app)
    guard.install(app, settings)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for router in ROUTERS:
        app.include_router(router)
    ui.install(app)  # the dashboard at /ui
    return app
