"""The agent: enroll once, recover the data directory, then one loop of periodic operations
(profile, heartbeat, desired-version poll, update, health, report) for every model the
server names, and the inference endpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from edge_agent.client import Backoff, ServerClient
from edge_agent.errors import EnrollmentError, ServerError, SettingsError
from edge_agent.health import HealthWatch
from edge_agent.loop import Loop, PeriodicOperation, RateLimitedLog
from edge_agent.optable import operator_table
from edge_agent.profile import device_profile
from edge_agent.recovery import recover
from edge_agent.serve import InferenceServer, ModelRuntime
from edge_agent.settings import AgentSettings
from edge_agent.store import AgentState, Credentials, Store
from edge_agent.update import Updater
from hadmc_core.delta import load_public
from hadmc_core.delta.errors import DeltaError

log = logging.getLogger(__name__)
PROFILE_PERIOD = 24 * 3600.0


class Agent:
    def __init__(self, settings: AgentSettings, *, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], Any] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings, self.transport, self.sleep, self.clock = settings, transport, sleep, clock
        self.store = Store(settings.data_dir)
        self.errors = RateLimitedLog()
        self.desired: dict[str, Any] | None = None
        self.etag: str | None = None
        self.failed: dict[int, float] = {}
        self.status = "starting"
        self.server: InferenceServer | None = None
        #: The server answered per-model fields with 422 (it predates several models).
        self.one_model_server = False

    def _client(self, base_url: str, credential: str | None = None) -> ServerClient:
        s = self.settings
        return ServerClient(base_url, credential=credential, transport=self.transport,
                            connect_timeout=s.connect_timeout_seconds,
                            io_timeout=s.io_timeout_seconds, sleep=self.sleep)

    def enroll(self) -> Credentials:
        """Reuse the stored credential, or spend the enrollment token once and store it."""
        s = self.settings
        self.store.ensure()
        creds = self.store.load_credentials()
        if creds is not None:
            self.store.public_pem()  # a credential without its pinned key is unusable
            return creds
        if not s.server_url:
            raise SettingsError("not enrolled yet and no server: pass --server URL "
                                "(or HADMC_AGENT_SERVER_URL)")
        if not s.enrollment_token:
            raise SettingsError("not enrolled yet: pass --enroll-token T (or "
                                "HADMC_AGENT_ENROLLMENT_TOKEN) from `POST /v1/enrollment-tokens`")
        client = self._client(s.server_url)
        try:
            body = client.register(s.enrollment_token, s.name, None)
        except ServerError as e:
            raise EnrollmentError(f"enrollment refused: {e}") from e
        finally:
            client.close()
        try:
            pem = str(body["manifest_public_key"]).encode()
            load_public(pem)
            creds = Credentials(int(body["device_id"]), str(body["credential"]), s.server_url)
        except (KeyError, TypeError, ValueError, DeltaError) as e:
            raise EnrollmentError(f"enrollment answer is malformed ({e})") from e
        self.store.save_enrollment(creds, pem)
        log.info("enrolled as device %d", creds.device_id, extra={"device_id": creds.device_id})
        return creds

    def start(self) -> None:
        """Enroll (or reuse), pin the key, recover, and build the loop."""
        s = self.settings
        self.creds = self.enroll()
        try:
            self.key = load_public(self.store.public_pem())
        except DeltaError as e:
            raise EnrollmentError(f"pinned server key is unusable ({e}); delete "
                                  "credentials.json and enroll again") from e
        self.state: AgentState = recover(self.store, self.key)
        self.client = self._client(s.server_url or self.creds.server_url, self.creds.credential)
        self.updater = Updater(settings=s, store=self.store, client=self.client, key=self.key,
                               device_id=self.creds.device_id, state=self.state)
        self.runtime = ModelRuntime(self.store, s.threads, self.state)
        self.health = HealthWatch(settings=s, store=self.store, state=self.state,
                                  served=self.runtime.served)

        def op(name: str, fn: Callable[[], object], period: float) -> PeriodicOperation:
            return PeriodicOperation(name, fn, period,
                                     Backoff(s.backoff_base_seconds, s.backoff_max_seconds),
                                     self.errors)

        self.report_op = op("report", self.send_reports, s.report_seconds)
        self.heartbeat_op = op("heartbeat", self.heartbeat, s.heartbeat_seconds)
        self.loop = Loop([op("profile", self.send_profile, PROFILE_PERIOD), self.heartbeat_op,
                          op("poll", self.poll, s.poll_seconds),
                          op("update", self.update, s.poll_seconds),
                          op("health", self.check_health, s.health_check_seconds),
                          self.report_op], clock=self.clock)
        if s.serve_port:
            try:
                self.server = InferenceServer(self.runtime, s.serve_port).start()
            except OSError as e:
                raise SettingsError(f"cannot serve on 127.0.0.1:{s.serve_port} ({e.strerror});"
                                    " pass another --serve-port (0 = off)") from e
        self.status = "ok"

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.client.close()

    # -- operations ------------------------------------------------------------------------
    @property
    def device_id(self) -> int:
        return self.creds.device_id

    def send_profile(self) -> None:
        profile = device_profile(self.settings.name)
        self.client.request("PUT", f"/v1/devices/{self.device_id}/profile", "profile",
                            json=profile)
        if self.settings.latency_table:
            table = operator_table(self.settings.threads or 1)
            self.client.request("POST", f"/v1/devices/{self.device_id}/latency",
                                "latency table", json={"operators": table})

    def heartbeat(self) -> None:
        st = self.state
        body = {"current_version_id": st.active, "status": self.status[:100],
                "models": [{"model": k, "version_id": ms.active}
                           for k, ms in sorted(st.models.items())]}
        self.post_compat(f"/v1/devices/{self.device_id}/heartbeat", "heartbeat", body)

    def post_compat(self, path: str, what: str, body: dict[str, Any]) -> None:
        """POST ``body``; a server from before several models per device refuses the
        per-model fields (422 naming ``body.model`` or ``body.models``), so they are left
        out for it from then on."""
        if self.one_model_server:
            body = {k: v for k, v in body.items() if k not in ("model", "models")}
        try:
            self.client.request("POST", path, what, json=body)
        except ServerError as e:
            if e.status != 422 or self.one_model_server or "body.model" not in str(e) \
                    or not {"model", "models"} & set(body):
                raise
            self.one_model_server = True
            log.info("the server does not know several models per device; reporting the "
                     "primary model's version only")
            self.post_compat(path, what, body)

    def poll(self) -> None:
        body, etag = self.client.desired(self.device_id, self.etag)
        if body is None:
            return
        if body != self.desired:
            self.failed.clear()  # a new desired state deserves a new attempt
        self.desired, self.etag = body, etag or None

    def entries(self) -> list[dict[str, Any]]:
        """The desired state per model (a server from before several models per device
        sends the top-level fields only: one entry)."""
        d = self.desired or {}
        models = d.get("models")
        if isinstance(models, list):
            return [e for e in models if isinstance(e, dict)]
        return [d] if d else []

    def _runs(self, entry: dict[str, Any], vid: int) -> bool:
        model = entry.get("model")
        if isinstance(model, str):
            ms = self.state.models.get(model)
            return ms is not None and ms.active == vid
        return any(ms.active == vid for ms in self.state.models.values())

    def pending(self) -> dict[str, Any] | None:
        """The first model whose desired version differs from the one it runs and is due
        for an attempt now; None when there is none (a model whose rollout is paused says
        hold, a version that failed waits ``retry_failed_seconds``)."""
        for entry in self.entries():
            vid = entry.get("version_id")
            if not isinstance(vid, int) or entry.get("hold") or self._runs(entry, vid):
                continue
            at = self.failed.get(vid)
            if at is not None and self.clock() - at < self.settings.retry_failed_seconds:
                continue
            return entry
        return None

    def pending_version(self) -> int | None:
        entry = self.pending()
        return int(entry["version_id"]) if entry is not None else None

    def update(self) -> None:
        entry = self.pending()
        if entry is None:
            return
        vid = int(entry["version_id"])
        what = f"{entry['model']} to {vid}" if entry.get("model") else f"to {vid}"
        self.status = f"updating {what}"
        report = self.updater.run(entry)
        if report["ok"]:
            self.status = "probation" if any(ms.probation for ms in
                                             self.state.models.values()) else "ok"
            self.failed.pop(vid, None)
        else:
            self.status = f"update {what} failed ({report['phase']})"
            self.failed[vid] = self.clock()
            self.state.pending_reports.append({"kind": "updates", "body": report})
            self.store.save_state(self.state)
        # on the next turn: a heartbeat with the new current version, then the report
        self.heartbeat_op.next_run = self.report_op.next_run = 0.0

    def check_health(self) -> None:
        """One health check of every version on probation; a failure rolls its model
        back (and the version is not tried again before ``retry_failed_seconds``)."""
        on_probation = {k: int(ms.probation["version_id"])
                        for k, ms in self.state.models.items() if ms.probation}
        outcomes = self.health.check()
        if not outcomes:
            return
        for key, outcome in outcomes.items():
            if outcome == "failed":
                self.failed[on_probation[key]] = self.clock()
        failed = [k for k, o in outcomes.items() if o == "failed"]
        if failed:
            self.status = f"{', '.join(failed)}: version failed its health window"
        elif not any(ms.probation for ms in self.state.models.values()):
            self.status = "ok"
        self.heartbeat_op.next_run = self.report_op.next_run = 0.0

    def send_reports(self) -> None:
        st = self.state
        while st.pending_reports:
            item = st.pending_reports[0]
            path = f"/v1/devices/{self.device_id}/{item.get('kind', 'updates')}"
            try:
                self.post_compat(path, "report", dict(item.get("body", {})))
            except ServerError as e:
                if e.status in (401, 403):
                    raise
                log.warning("report dropped: %s", e)
            st.pending_reports.pop(0)
            self.store.save_state(st)

    def run_forever(self) -> None:
        try:
            self.loop.run_forever()
        finally:
            self.close()
