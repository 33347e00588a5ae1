"""Rollout controls with real processes: ``hadmc serve`` (PostgreSQL, its scheduler thread)
and three ``hadmc-agent`` processes on loopback with a short health window.

In order, on one fleet: a version built for another device or with another interface is
refused (409, the agents' real profiles); pause holds devices that were assigned (agents stopped
with SIGSTOP while the rollout is created and paused, then let run); an agent killed with
SIGKILL on probation restarts still on probation and commits; abort before the update and
abort during probation both leave every device on the version it had, with no success
counted; rolling out an older version succeeds and stays; a much slower version fails the
agents' health window (they roll back by themselves); an automatic abort for latency
regression sends the device that committed back (``rollback_on_abort``); a device revoked
mid-rollout is skipped and the rollout completes without it. About 60-90 s.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hadmc_core.hal.onnxwrite import mlp
from tests.e2e.helpers import (
    Agent,
    Server,
    database,
    local_profile,
    ok,
    rollout,
    rollout_rows,
    rollout_state,
    server_env,
    start_server,
    stop,
    wait_for,
)

pytestmark = pytest.mark.slow
__all__ = ["database"]  # the module-scoped fixture
WINDOW = "2.5"
FAST = [64, 256, 4]
SLOW = [64, 1024, *[1024] * 10, 4]  # same inputs and outputs, far more work


@dataclass
class Fleet:
    s: Server
    agents: list[Agent]
    vids: dict[str, int]
    devices: dict[str, int]  # agent name -> device id

    def on(self, vid: int, agents: list[Agent] | None = None) -> bool:
        return all(a.current() == vid for a in (agents or self.agents))

    def committed(self, vid: int) -> bool:
        return all(a.current() == vid and not a.state().probation for a in self.agents)

    def dev(self, a: Agent) -> int:
        return self.devices[a.name]


@pytest.fixture(scope="module")
def fleet(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("controls")
    s = start_server(server_env(database, tmp, HADMC_ROLLOUT_INTERVAL_SECONDS="0.3",
                                HADMC_EMBEDDED_WORKER="false"), tmp)
    profile = local_profile()
    mid = ok(s.admin.post("/v1/models", params={"name": "mlp", "format": "onnx"},
                          content=mlp(FAST, 1), headers=s.octet), 201)["id"]
    vids = {}
    for name, data in (("v1", mlp(FAST, 1)), ("v2", mlp(FAST, 2)), ("slow", mlp(SLOW, 3)),
                       ("v4", mlp(FAST, 4))):
        vids[name] = ok(s.admin.post(f"/v1/models/{mid}/versions", params={"profile": profile},
                                     content=data, headers=s.octet), 201)["id"]
    vids["orin"] = ok(s.admin.post(f"/v1/models/{mid}/versions",
                                   params={"profile": "jetson-orin"}, content=mlp(FAST, 5),
                                   headers=s.octet), 201)["id"]
    vids["other"] = ok(s.admin.post(f"/v1/models/{mid}/versions",  # other inputs, outputs
                                    params={"profile": profile}, content=mlp([16, 3], 6),
                                    headers=s.octet), 201)["id"]
    token = ok(s.admin.post("/v1/enrollment-tokens", json={"name": "ctl", "max_uses": 3}),
               201)["token"]
    common = {"HADMC_AGENT_HEALTH_WINDOW_SECONDS": WINDOW,
              "HADMC_AGENT_HEALTH_CHECK_SECONDS": "0.3", "HADMC_AGENT_SMOKE_RUNS": "7"}
    agents = [Agent(0, s, token, tmp, **common, HADMC_AGENT_HEALTH_MAX_LATENCY_RATIO="3"),
              Agent(1, s, token, tmp, **common, HADMC_AGENT_HEALTH_MAX_LATENCY_RATIO="3"),
              # this one does not check latency: the server's regression rule must act
              Agent(2, s, token, tmp, **common, HADMC_AGENT_HEALTH_MAX_LATENCY_RATIO="0")]
    try:
        for a in agents:
            a.start()

        def enrolled() -> dict[str, int] | None:
            data = ok(s.admin.get("/v1/devices"))["data"]
            return {d["name"]: d["id"] for d in data} \
                if len(data) == 3 and all(d["profile"] for d in data) else None

        f = Fleet(s, agents, vids, wait_for(enrolled, "3 enrolled devices with profiles"))
        r0 = rollout(s, vids["v1"], [100])
        wait_for(lambda: rollout_state(s, r0) == "completed", "v1 everywhere", 60)
        assert f.committed(vids["v1"])
        yield f
    finally:
        for a in agents:
            a.stop()
        tails = {a.name: a.log.read_text()[-1500:] for a in agents if a.log.exists()}
        print(tails, s.log.read_text()[-3000:])
        s.admin.close()
        stop(s.proc)


@pytest.fixture(autouse=True)
def _close_rollouts(fleet: Fleet) -> Iterator[None]:
    """A test that fails leaves no open rollout to block the next one."""
    yield
    for state in ("active", "paused"):
        for r in ok(fleet.s.admin.get("/v1/rollouts", params={"state": state}))["data"]:
            fleet.s.admin.post(f"/v1/rollouts/{r['id']}/abort")


def paused_agents(f: Fleet) -> None:
    for a in f.agents:
        a.signal(signal.SIGSTOP)


def resumed_agents(f: Fleet) -> None:
    for a in f.agents:
        a.signal(signal.SIGCONT)


def test_versions_that_do_not_fit_are_refused(fleet: Fleet) -> None:
    f = fleet
    body = {"version_id": f.vids["orin"], "selector": {"all": True}}
    r = f.s.admin.post("/v1/rollouts", json=body)
    assert r.status_code == 409 and "built for jetson-orin" in r.json()["detail"], r.text
    r = f.s.admin.post("/v1/rollouts", json={**body, "version_id": f.vids["other"]})
    assert r.status_code == 409 and "changes the interface" in r.json()["detail"], r.text
    assert "set replace_model" in r.json()["detail"]
    assert f.on(f.vids["v1"])


def test_pause_holds_and_probation_survives_sigkill(fleet: Fleet) -> None:
    f = fleet
    paused_agents(f)
    rid = rollout(f.s, f.vids["v2"], [100])
    ok(f.s.admin.post(f"/v1/rollouts/{rid}/pause"))
    resumed_agents(f)
    time.sleep(3.0)  # ten polls: a paused rollout moves nobody
    assert f.on(f.vids["v1"])
    assert {r["status"] for r in rollout_rows(f.s, rid).values()} == {"assigned"}
    ok(f.s.admin.post(f"/v1/rollouts/{rid}/resume"))
    victim = f.agents[0]
    wait_for(lambda: (victim.state().probation or {}).get("version_id")
             == f.vids["v2"], "agent-0 on probation with v2", 30, every=0.05)
    victim.kill()
    victim.start()
    wait_for(lambda: rollout_state(f.s, rid) == "completed", "the resumed rollout", 60)
    assert f.committed(f.vids["v2"])
    rows = rollout_rows(f.s, rid)
    assert {r["status"] for r in rows.values()} == {"succeeded"}
    assert all(r["p50_ms"] for r in rows.values())
    assert victim.state().highest["model-1"] == 2  # the floor rose at the commit


def test_abort_before_and_during_probation_moves_nobody(fleet: Fleet) -> None:
    f = fleet
    paused_agents(f)
    rid = rollout(f.s, f.vids["v4"], [100])
    ok(f.s.admin.post(f"/v1/rollouts/{rid}/abort"))
    resumed_agents(f)
    time.sleep(3.0)
    assert f.committed(f.vids["v2"])
    assert {r["status"] for r in rollout_rows(f.s, rid).values()} == {"cancelled"}

    rid = rollout(f.s, f.vids["v4"], [100])
    wait_for(lambda: all((a.state().probation or {}).get("version_id") == f.vids["v4"]
                         for a in f.agents), "every agent on probation with v4", 30,
             every=0.05)
    ok(f.s.admin.post(f"/v1/rollouts/{rid}/abort"))
    wait_for(lambda: f.committed(f.vids["v2"]), "every agent back on v2", 60)
    time.sleep(float(WINDOW) + 1.0)  # their v4 windows would have ended by now
    assert f.committed(f.vids["v2"])
    rows = rollout_rows(f.s, rid)
    assert {r["status"] for r in rows.values()} == {"cancelled"}, rows
    assert rollout_state(f.s, rid) == "aborted"


def test_older_version_rolls_out_and_stays(fleet: Fleet) -> None:
    f = fleet
    rid = rollout(f.s, f.vids["v1"], [100])
    wait_for(lambda: rollout_state(f.s, rid) == "completed", "the rollout of v1", 60)
    assert {r["status"] for r in rollout_rows(f.s, rid).values()} == {"succeeded"}
    time.sleep(2.0)
    assert f.committed(f.vids["v1"]) and rollout_state(f.s, rid) == "completed"


def test_health_window_and_automatic_abort_roll_back(fleet: Fleet) -> None:
    f = fleet
    checked = f.agents[:2]
    rid = rollout(f.s, f.vids["slow"], [100], selector={
        "device_ids": [f.dev(a) for a in checked]}, max_failure_rate=0.5)
    wait_for(lambda: rollout_state(f.s, rid) == "aborted", "the slow rollout to abort", 60)
    rows = rollout_rows(f.s, rid)
    assert {r["status"] for r in rows.values()} == {"failed"}, rows
    assert all(r["reason"].startswith("health: p50 latency") for r in rows.values()), rows
    assert f.committed(f.vids["v1"])

    unchecked = f.agents[2]  # commits the slow version; the server sees +1000s of percent
    rid = rollout(f.s, f.vids["slow"], [100], selector={"device_ids": [f.dev(unchecked)]},
                  max_latency_regression=1.0)
    wait_for(lambda: rollout_state(f.s, rid) == "aborted", "the regression abort", 60)
    events = ok(f.s.admin.get(f"/v1/rollouts/{rid}/events"))["data"]
    abort = next(e for e in events if e["kind"] == "abort")
    assert "latency regression" in abort["reason"] and abort["details"]["rolled_back"] == 1
    wait_for(lambda: f.committed(f.vids["v1"]), "the slow device back on v1", 60)
    assert rollout_rows(f.s, rid)[f.dev(unchecked)]["status"] == "rolled_back"


def test_revoked_device_is_skipped_mid_rollout(fleet: Fleet) -> None:
    f = fleet
    first, last = sorted(f.agents, key=f.dev)[:2], max(f.agents, key=f.dev)
    last.signal(signal.SIGSTOP)
    rid = rollout(f.s, f.vids["v2"], [50, 100])  # waves go in device id order: 2, then 1
    ok(f.s.admin.delete(f"/v1/devices/{f.dev(last)}"))
    last.signal(signal.SIGCONT)
    wait_for(lambda: rollout_state(f.s, rid) == "completed", "the rollout without agent-2",
             60)
    rows = rollout_rows(f.s, rid)
    assert [rows[f.dev(a)]["status"] for a in first] == ["succeeded", "succeeded"]
    assert rows[f.dev(last)]["status"] == "skipped"
    assert rows[f.dev(last)]["reason"] == "device revoked"
    assert last.current() == f.vids["v1"]
    assert f.on(f.vids["v2"], first)


def test_no_server_errors(fleet: Fleet) -> None:
    log = Path(fleet.s.log).read_text()
    assert " 500 " not in log and "Traceback" not in log, log[-3000:]
