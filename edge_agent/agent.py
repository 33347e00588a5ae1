"""The agent: enroll once, recover the data directory, then one loop of periodic operations
(profile, heartbeat, desired-version poll, update, report) and the inference endpoint."""

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
        self.runtime = ModelRuntime(self.store, s.threads)
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
        self.client.request("POST", f"/v1/devices/{self.device_id}/heartbeat", "heartbeat",
                            json={"current_version_id": self.state.active,
                                  "status": self.status[:100]})

    def poll(self) -> None:
        body, etag = self.client.desired(self.device_id, self.etag)
        if body is None:
            return
        if body != self.desired:
            self.failed.clear()  # a new desired state deserves a new attempt
        self.desired, self.etag = body, etag or None

    def pending_version(self) -> int | None:
        """The desired version id when an attempt is due now, else None (also while the
        server says hold: a paused rollout)."""
        d = self.desired
        vid = d.get("version_id") if d else None
        if not isinstance(vid, int) or vid == self.state.active or (d or {}).get("hold"):
            return None
        at = self.failed.get(vid)
        if at is not None and self.clock() - at < self.settings.retry_failed_seconds:
            return None
        return vid

    def update(self) -> None:
        vid = self.pending_version()
        if vid is None or self.desired is None:
            return
        self.status = f"updating to {vid}"
        report = self.updater.run(self.desired)
        if report["ok"]:
            self.status = "probation" if self.state.probation else "ok"
            self.failed.pop(vid, None)
        else:
            self.status = f"update to {vid} failed ({report['phase']})"
            self.failed[vid] = self.clock()
            self.state.pending_reports.append({"kind": "updates", "body": report})
            self.store.save_state(self.state)
        # on the next turn: a heartbeat with the new current version, then the report
        self.heartbeat_op.next_run = self.report_op.next_run = 0.0

    def check_health(self) -> None:
        """One health check of a version on probation; a failure rolls back (and the
        version is not tried again before ``retry_failed_seconds``)."""
        p = self.state.probation
        outcome = self.health.check()
        if outcome is None or p is None:
            return
        vid = int(p["version_id"])
        if outcome == "failed":
            self.failed[vid] = self.clock()
            self.status = f"version {vid} failed its health window"
        else:
            self.status = "ok"
        self.heartbeat_op.next_run = self.report_op.next_run = 0.0

    def send_reports(self) -> None:
        st = self.state
        while st.pending_reports:
            item = st.pending_reports[0]
            path = f"/v1/devices/{self.device_id}/{item.get('kind', 'updates')}"
            try:
                self.client.request("POST", path, "report", json=item.get("body", {}))
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
