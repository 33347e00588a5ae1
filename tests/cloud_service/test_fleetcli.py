"""The fleet CLI (``hadmc devices|versions|rollouts|jobs``, ``hadmc token --server``) run as a
real process against a real ``hadmc serve`` (SQLite) on loopback."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.cloud_service.conftest import device_profile, make_onnx
from tests.e2e.helpers import Server, free_port, ok, server_env, start_server, stop, wait_for

HADMC = str(Path(sys.executable).parent / "hadmc")
OCTET = {"Content-Type": "application/octet-stream"}


@dataclass
class Fleet:
    server: Server
    token: str
    devices: dict[str, dict[str, Any]]  # name -> {"id", "headers"}
    version: int
    tmp: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HADMC_")}
        return {**env, "HADMC_SERVER": self.server.url, "HADMC_TOKEN": self.token, **extra}

    def hadmc(self, *args: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([HADMC, *args], env=env or self.env(), capture_output=True,
                              text=True, timeout=60, cwd=self.tmp)

    def json(self, *args: str) -> Any:
        res = self.hadmc(*args, "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    def report(self, name: str, rollout_id: int, ok_: bool) -> None:
        dev = self.devices[name]
        body = {"version_id": self.version, "rollout_id": rollout_id, "ok": ok_,
                "phase": "done" if ok_ else "verify", "p50_ms": 1.0 if ok_ else None,
                "reason": None if ok_ else "chunk w#0: hash mismatch"}
        ok(self.server.admin.post(f"/v1/devices/{dev['id']}/updates", json=body,
                                  headers=dev["headers"]), 201)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A server with two enrolled x86 devices and one published version."""
    tmp = tmp_path_factory.mktemp("fleetcli")
    env = server_env(f"sqlite:///{tmp / 'hadmc.db'}", tmp, HADMC_ROLLOUT_INTERVAL_SECONDS="1",
                     HADMC_EMBEDDED_WORKER="false")
    s = start_server(env, tmp)
    try:
        admin = s.admin
        enroll = ok(admin.post("/v1/enrollment-tokens", json={"max_uses": 2}), 201)["token"]
        devices = {}
        for name in ("cam-a", "cam-b"):
            d = ok(httpx.post(f"{s.url}/v1/devices/register",
                              json={"enrollment_token": enroll, "name": name,
                                    "profile": device_profile()}), 201)
            devices[name] = {"id": d["device_id"],
                             "headers": {"Authorization": f"Bearer {d['credential']}"}}
        onnx = make_onnx(tmp / "m.onnx", np.eye(4, dtype=np.float32)).read_bytes()
        model = ok(admin.post("/v1/models", params={"name": "m", "format": "onnx"},
                              content=onnx, headers=OCTET), 201)
        version = ok(admin.post(f"/v1/models/{model['id']}/versions",
                                params={"profile": "x86-avx2"}, content=onnx,
                                headers=OCTET), 201)
        token = admin.headers["Authorization"].removeprefix("Bearer ")
        yield Fleet(s, token, devices, version["id"], tmp)
    finally:
        stop(s.proc)


def rows(table: str) -> list[list[str]]:
    """An aligned table's lines split into cells (columns are two or more spaces apart)."""
    return [re.split(r"\s{2,}", line.strip()) for line in table.strip().splitlines()]


def one_error_line(res: subprocess.CompletedProcess[str], exit_code: int) -> str:
    assert res.returncode == exit_code, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_devices_list_show_tag(fleet: Fleet) -> None:
    api = ok(fleet.server.admin.get("/v1/devices"))
    got = fleet.json("devices", "list")
    assert got["count"] == api["count"] == 2
    assert [d["id"] for d in got["data"]] == [d["id"] for d in api["data"]]

    res = fleet.hadmc("devices", "list")
    assert res.returncode == 0, res.stderr
    table = rows(res.stdout)
    assert table[0][:3] == ["ID", "NAME", "PROFILE"]
    assert {(r[0], r[1], r[2]) for r in table[1:]} == {
        (str(d["id"]), name, "x86-avx2") for name, d in fleet.devices.items()}

    b = fleet.devices["cam-b"]["id"]
    tagged = fleet.json("devices", "tag", str(b), "--tag", "line-3", "--tag", "north")
    assert sorted(tagged["tags"]) == ["line-3", "north"]
    shown = fleet.json("devices", "show", str(b))
    assert shown == ok(fleet.server.admin.get(f"/v1/devices/{b}"))
    assert sorted(shown["tags"]) == ["line-3", "north"]
    res = fleet.hadmc("devices", "show", str(b))
    assert re.search(r"^tags:\s+(line-3,north|north,line-3)$", res.stdout, re.M), res.stdout

    line = one_error_line(fleet.hadmc("devices", "show", "9999"), 4)
    assert line.startswith("error: 404 ") and "9999" in line
    one_error_line(fleet.hadmc("devices", "tag", str(b)), 2)  # neither --tag nor --clear


def test_versions_list_show(fleet: Fleet) -> None:
    got = fleet.json("versions", "list")
    assert got == ok(fleet.server.admin.get("/v1/versions"))
    assert [v["id"] for v in got["data"]] == [fleet.version]
    assert fleet.json("versions", "show", str(fleet.version))["profile"] == "x86-avx2"
    table = rows(fleet.hadmc("versions", "list").stdout)
    assert table[0][:4] == ["ID", "MODEL", "NUMBER", "PROFILE"]
    assert [r[0] for r in table[1:]] == [str(fleet.version)]


def test_rollout_pause_resume_abort(fleet: Fleet) -> None:
    a = fleet.devices["cam-a"]["id"]
    r = fleet.json("rollouts", "create", "--version", str(fleet.version), "--device", str(a),
                   "--waves", "100", "--wave-timeout", "600", "--max-failure-rate", "0.5")
    assert (r["state"], r["waves"], r["max_failure_rate"]) == ("active", [100], 0.5)
    assert r["selector"] == {"device_ids": [a]} and r["wave_counts"] == [{"assigned": 1}]
    rid = str(r["id"])
    assert fleet.json("rollouts", "pause", rid)["state"] == "paused"
    assert fleet.json("rollouts", "show", rid) == ok(fleet.server.admin.get(f"/v1/rollouts/{rid}"))
    assert fleet.json("rollouts", "resume", rid)["state"] == "active"
    assert r["id"] in [x["id"] for x in fleet.json("rollouts", "list", "--state", "active")["data"]]
    assert fleet.json("rollouts", "abort", rid)["state"] == "aborted"

    res = fleet.hadmc("rollouts", "show", rid)
    assert re.search(r"^state:\s+aborted$", res.stdout, re.M), res.stdout
    assert re.search(r"^last event: abort", res.stdout, re.M), res.stdout
    table = rows(fleet.hadmc("rollouts", "list").stdout)
    assert table[0][:3] == ["ID", "VERSION", "STATE"]
    assert [rid, str(fleet.version), "aborted"] in [row[:3] for row in table]
    kinds = [e["kind"] for e in fleet.json("rollouts", "events", rid)["data"]]
    assert kinds[-3:] == ["pause", "resume", "abort"]

    line = one_error_line(fleet.hadmc("rollouts", "abort", rid), 1)
    assert line.startswith("error: 409 "), line
    one_error_line(fleet.hadmc("rollouts", "create", "--version", str(fleet.version)), 2)
    one_error_line(fleet.hadmc("rollouts", "create", "--version", str(fleet.version), "--all",
                               "--waves", "5,x"), 2)


def _created(fleet: Fleet, before: int) -> int:
    def newest() -> int | None:
        data = ok(fleet.server.admin.get("/v1/rollouts", params={"limit": 1}))["data"]
        return data[0]["id"] if data and data[0]["id"] > before else None

    return int(wait_for(newest, "the CLI to create the rollout", 30))


def _newest_rollout(fleet: Fleet) -> int:
    data = ok(fleet.server.admin.get("/v1/rollouts", params={"limit": 1}))["data"]
    return int(data[0]["id"]) if data else 0


def test_rollout_watch_until_completed(fleet: Fleet) -> None:
    r = fleet.json("rollouts", "create", "--version", str(fleet.version), "--tag", "line-3",
                   "--waves", "100", "--wave-timeout", "600")
    watch = subprocess.Popen([HADMC, "rollouts", "watch", str(r["id"]), "--interval", "0.3"],
                             env=fleet.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        time.sleep(1)
        assert watch.poll() is None  # still watching: nobody reported
        fleet.report("cam-b", r["id"], ok_=True)
        out, err = watch.communicate(timeout=30)
    finally:
        stop(watch)  # type: ignore[arg-type]
    assert watch.returncode == 0, (out, err)
    assert f"rollout {r['id']}  version {fleet.version}  active" in out
    assert re.search(r"^\s*1\s+100%\s+1\s+succeeded 1$", out, re.M), out
    assert out.strip().splitlines()[-1].startswith("completed: "), out


def test_rollout_create_watch_until_aborted(fleet: Fleet) -> None:
    a = fleet.devices["cam-a"]["id"]
    before = _newest_rollout(fleet)
    watch = subprocess.Popen([HADMC, "rollouts", "create", "--version", str(fleet.version),
                              "--device", str(a), "--waves", "100", "--watch", "--interval",
                              "0.3"], env=fleet.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        rid = _created(fleet, before)
        fleet.report("cam-a", rid, ok_=False)
        out, err = watch.communicate(timeout=30)
    finally:
        stop(watch)  # type: ignore[arg-type]
    assert watch.returncode == 1, (out, err)
    assert out.startswith(f"created rollout {rid}: version {fleet.version} to 1 devices"), out
    last = out.strip().splitlines()[-1]
    assert last.startswith("aborted: ") and "failure" in last, out
    devices = fleet.json("rollouts", "devices", str(rid))["data"]
    assert [(d["device_id"], d["status"]) for d in devices] == [(a, "failed")]


def test_jobs_submit_list_show_cancel_watch(fleet: Fleet, tiny_weights: Path) -> None:
    admin = fleet.server.admin
    model = ok(admin.post("/v1/models", params={"name": "tiny", "arch": "densenet",
                                                "width": 0.5},
                          content=tiny_weights.read_bytes(), headers=OCTET), 201)
    dataset = ok(admin.post("/v1/datasets", json={"builtin": "digits"}), 201)
    config = fleet.tmp / "job.json"
    config.write_text(json.dumps({"quantize": {"enabled": False}}))
    job = fleet.json("jobs", "submit", "--model", str(model["id"]), "--dataset",
                     str(dataset["id"]), "--profile", "x86-avx2", "--max-accuracy-drop", "2",
                     "--latency-budget-ms", "5", "--config", str(config))
    assert job["state"] == "queued"  # no worker runs in this server
    assert job["config"]["quantize"]["enabled"] is False
    assert job["config"]["constraints"]["max_accuracy_drop"] == 2
    assert job["config"]["constraints"]["latency_budget_ms"] == 5
    jid = str(job["id"])
    assert fleet.json("jobs", "show", jid) == ok(admin.get(f"/v1/jobs/{jid}"))
    listed = fleet.json("jobs", "list", "--state", "queued", "--model", str(model["id"]))
    assert [j["id"] for j in listed["data"]] == [job["id"]]
    table = rows(fleet.hadmc("jobs", "list").stdout)
    assert table[0][:5] == ["ID", "MODEL", "DATASET", "PROFILE", "STATE"]
    assert table[1][:5] == [jid, str(model["id"]), str(dataset["id"]), "x86-avx2", "queued"]

    res = fleet.hadmc("jobs", "cancel", jid)
    assert (res.returncode, res.stdout.strip()) == (0, f"job {jid}: cancelled"), res.stderr
    res = fleet.hadmc("jobs", "watch", jid, "--interval", "0.2")
    assert res.returncode == 1 and res.stdout.strip().splitlines()[-1] == "cancelled", res

    line = one_error_line(fleet.hadmc("jobs", "submit", "--model", "999", "--dataset",
                                      str(dataset["id"]), "--profile", "x86-avx2"), 4)
    assert line.startswith("error: 404 ") and "999" in line
    config.write_text("[1, 2]")
    one_error_line(fleet.hadmc("jobs", "submit", "--model", str(model["id"]), "--dataset",
                               str(dataset["id"]), "--profile", "x86-avx2", "--config",
                               str(config)), 2)


def test_unreachable_server_bad_and_missing_token(fleet: Fleet) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    res = fleet.hadmc("devices", "list", "--server", down)
    line = one_error_line(res, 3)
    assert line.startswith(f"error: cannot reach the HAD-MC server at {down} ("), line
    assert "Traceback" not in res.stderr

    res = fleet.hadmc("rollouts", "list", "--token", "hadmc_u_not-a-real-token")
    assert one_error_line(res, 1).startswith("error: 401 "), res.stderr
    env = fleet.env()
    del env["HADMC_TOKEN"]
    assert "HADMC_TOKEN" in one_error_line(fleet.hadmc("jobs", "list", env=env), 2)


def _knows_roles(fleet: Fleet) -> bool:
    schemas = ok(httpx.get(f"{fleet.server.url}/openapi.json"))["components"]["schemas"]
    return "role" in schemas["ApiTokenCreate"]["properties"]


def test_tokens_over_rest_and_locally(fleet: Fleet) -> None:
    made = fleet.json("token", "create", "--name", "ci", "--expires-days", "3")
    assert made["name"] == "ci" and made["token"].startswith("hadmc_u_")
    listed = fleet.json("token", "list")
    assert made["id"] in [t["id"] for t in listed["data"]]
    table = rows(fleet.hadmc("token", "list").stdout)
    assert [str(made["id"]), "ci"] in [r[:2] for r in table[1:]]
    res = fleet.hadmc("token", "revoke", str(made["id"]))
    assert res.stdout.strip() == f"revoked API token {made['id']}", res.stderr
    res = fleet.hadmc("devices", "list", "--token", made["token"])
    assert one_error_line(res, 1).startswith("error: 401 ")

    res = fleet.hadmc("token", "create", "--role", "viewer", "--json")
    if _knows_roles(fleet):
        viewer = json.loads(res.stdout)
        assert viewer["role"] == "viewer"
        assert fleet.hadmc("devices", "list", "--token", viewer["token"]).returncode == 0
        res = fleet.hadmc("rollouts", "pause", "1", "--token", viewer["token"])
        assert one_error_line(res, 1).startswith("error: 403 ")
    else:
        assert "does not know token roles" in one_error_line(res, 1)

    # Without a server the same commands work on the local database.
    local = {**fleet.env(), "HADMC_DATABASE_URL": f"sqlite:///{fleet.tmp / 'hadmc.db'}"}
    del local["HADMC_SERVER"], local["HADMC_TOKEN"]
    res = fleet.hadmc("token", "list", env=local)
    assert res.returncode == 0, res.stderr
    assert rows(res.stdout)[0][:2] == ["ID", "USER"]
    assert str(made["id"]) in [r[0] for r in rows(res.stdout)[1:]]
    one_error_line(fleet.hadmc("token", "list", "--json", env=local), 2)


def test_fleet_commands_import_neither_fastapi_nor_sqlalchemy(tmp_path: Path) -> None:
    code = ("import sys; import cloud_service.fleetcli as f, typer; f.register(typer.Typer()); "
            "import cloud_service.fleetcli.tokens; "
            "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'torch') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert (res.returncode, res.stdout.strip()) == (0, "[]"), res.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_redraws_in_place_on_a_terminal_and_prints_changes_elsewhere() -> None:
    from cloud_service.fleetcli.live import Live

    tty = _Terminal()
    live = Live(tty)
    live.draw(["a", "b", "c"])
    live.draw(["d"])
    # Back three lines, redraw one, blank the two stale lines, come back up two.
    assert tty.getvalue() == ("\x1b[2Ka\n\x1b[2Kb\n\x1b[2Kc\n"
                              "\x1b[3F\x1b[2Kd\n\x1b[2K\n\x1b[2K\n\x1b[2F")
    pipe = io.StringIO()
    live = Live(pipe)
    for lines in (["x"], ["x"], ["y", "z"]):
        live.draw(lines)
    assert pipe.getvalue() == "x\ny\nz\n"


def test_devices_show_the_version_of_each_model(fleet: Fleet) -> None:
    s = fleet.server
    tok = ok(s.admin.post("/v1/enrollment-tokens", json={"max_uses": 1}), 201)["token"]
    d = ok(httpx.post(f"{s.url}/v1/devices/register", json={
        "enrollment_token": tok, "name": "cam-two", "profile": device_profile()}), 201)
    me = {"Authorization": f"Bearer {d['credential']}"}
    onnx = make_onnx(fleet.tmp / "other.onnx", np.ones((3, 2), np.float32)).read_bytes()
    other = ok(s.admin.post("/v1/models", params={"name": "other", "format": "onnx"},
                            content=onnx, headers=OCTET), 201)
    second = ok(s.admin.post(f"/v1/models/{other['id']}/versions",
                             params={"profile": "x86-avx2"}, content=onnx, headers=OCTET), 201)
    for vid in (fleet.version, second["id"]):
        ok(s.admin.post(f"/v1/devices/{d['device_id']}/updates", headers=me,
                        json={"version_id": vid, "ok": True, "phase": "done"}), 201)
    first = ok(s.admin.get(f"/v1/versions/{fleet.version}"))["model_id"]
    want = f"model-{first}:{fleet.version},model-{other['id']}:{second['id']}"
    table = rows(fleet.hadmc("devices", "list").stdout)
    assert table[0][3] == "VERSIONS"
    assert [r[3] for r in table if r[1] == "cam-two"] == [want]
    shown = fleet.hadmc("devices", "show", str(d["device_id"])).stdout
    assert re.search(rf"^model model-{other['id']}:\s+version {second['id']} \(previous -; "
                     r"last report done\)$", shown, re.M), shown


def test_versions_show_measured_latency(fleet: Fleet) -> None:
    """``versions show`` prints what devices measured for the version (a published upload
    has no prediction, so none is printed) and ``--json`` carries the API's figures."""
    s = fleet.server
    tok = ok(s.admin.post("/v1/enrollment-tokens", json={"max_uses": 1}), 201)["token"]
    d = ok(httpx.post(f"{s.url}/v1/devices/register", json={
        "enrollment_token": tok, "name": "cam-timed", "profile": device_profile()}), 201)
    onnx = make_onnx(fleet.tmp / "timed.onnx", np.ones((2, 2), np.float32)).read_bytes()
    model = ok(s.admin.post("/v1/models", params={"name": "timed", "format": "onnx"},
                            content=onnx, headers=OCTET), 201)
    ver = ok(s.admin.post(f"/v1/models/{model['id']}/versions",
                          params={"profile": "x86-avx2"}, content=onnx, headers=OCTET), 201)
    ok(s.admin.post(f"/v1/devices/{d['device_id']}/updates",
                    headers={"Authorization": f"Bearer {d['credential']}"},
                    json={"version_id": ver["id"], "ok": True, "phase": "done",
                          "p50_ms": 1.25, "p95_ms": 1.5}), 201)
    got = fleet.json("versions", "show", str(ver["id"]))["latency"]
    assert got["measured_p50_ms"] == 1.25 and got["devices"] == 1
    assert got["predicted_ms"] is None and got["error_pct"] is None
    out = fleet.hadmc("versions", "show", str(ver["id"])).stdout
    assert re.search(r"^measured latency:\s+1\.25 ms median p50 of 1 device\(s\), median "
                     r"p95 1\.5 ms$", out, re.M), out
    assert re.search(r"^predicted latency:\s+-$", out, re.M), out


def test_jobs_submit_to_a_device_or_by_tag(fleet: Fleet) -> None:
    admin = fleet.server.admin
    model = ok(admin.get("/v1/models"))["data"][0]["id"]
    data = ok(admin.post("/v1/datasets", json={"builtin": "digits"}), 201)["id"]
    a, b = fleet.devices["cam-a"]["id"], fleet.devices["cam-b"]["id"]
    ok(admin.patch(f"/v1/devices/{b}", json={"tags": ["line-7"]}))
    base = ("jobs", "submit", "--model", str(model), "--dataset", str(data))

    job = fleet.json(*base, "--device", str(a))
    assert job["target"] == {"device_ids": [a], "runtime": "onnxruntime-cpu"}
    assert job["profile"] == f"device:{a}" and job["state"] == "queued"
    job = fleet.json(*base, "--tag", "line-7", "--tag", "line-8")
    assert job["target"] == {"device_ids": [b], "runtime": "onnxruntime-cpu",
                             "tags": ["line-7", "line-8"]}

    line = one_error_line(fleet.hadmc(*base, "--tag", "nowhere"), 1)
    assert line.startswith("error: 409 ") and "no usable device has any of the tags" in line
    line = one_error_line(fleet.hadmc(*base, "--device", str(a), "--profile", "x86-avx2"), 2)
    assert "give exactly one target" in line  # the API's 404s: test_targets.py
