"""Chaos benchmark: rollouts to 50 real agents while an unlucky operator and a hostile
world act at random, then a check that every device's version is explained.

    python bench/chaos.py                    # 50 agents, 5 minutes of chaos
    python bench/chaos.py --agents 10 --minutes 1 --seed 3

`hadmc serve` runs on a throwaway PostgreSQL database (its rollout scheduler thread, no
broker); every agent is a real `hadmc-agent` process with its own data directory, a health
window of a few seconds, on loopback. Versions of one model line are rolled out one after
another in waves (newer and older ones), while the bench, at random:

- pauses a rollout and resumes it a few seconds later, or aborts it;
- revokes a device (a few in all);
- kills an agent with SIGKILL (often in the middle of an update or its health window) and
  starts it again a moment later;
- rolls out, to a few devices, a version that is far slower than the one they run, which
  fails their health window (they roll back by themselves);
- tries to roll out a version built for a Jetson and a version of another model, which
  must be refused.

At the end (every rollout finished, every agent idle) it checks, per device, against the
agent's own data directory:

- the device runs a committed version (not on probation);
- the version is the one its rollout history explains: the latest rollout that reached it
  says which (succeeded: that rollout's version; failed, cancelled or rolled back: the
  version it had before), and no device runs an aborted rollout's version unless its
  success was recorded before the abort;
- no device runs a version it does not fit;

and that the server answered no 5xx (its access log and every call of the bench) and the
API process's resident memory stayed under ``--rss-bound-mb``. Results go to
bench/results/chaos.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.service import create_database, drop_database, serve  # noqa: E402
from edge_agent.store import AgentState, Store  # noqa: E402
from hadmc_core.hal.onnxwrite import mlp  # noqa: E402

FAST, SLOW = [64, 256, 4], [64, 1024, *[1024] * 10, 4]
OCTET = {"Content-Type": "application/octet-stream"}


@dataclass
class Api:
    """The bench's own client: counts every answer by status class."""

    client: httpx.Client
    statuses: dict[str, int] = field(default_factory=dict)

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = self.client.request(method, path, **kw)
        key = f"{r.status_code // 100}xx"
        self.statuses[key] = self.statuses.get(key, 0) + 1
        if r.status_code >= 500:
            print(f"  5xx: {method} {path}: {r.status_code} {r.text[:300]}", flush=True)
        return r

    def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        r = self.call(method, path, **kw)
        if r.status_code != status:
            raise SystemExit(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json()


class Agent:
    def __init__(self, i: int, url: str, token: str, root: Path, env: dict[str, str]) -> None:
        self.name, self.dir, self.log = f"chaos-{i}", root / f"a{i}", root / f"a{i}.log"
        self.cmd = [sys.executable, "-m", "edge_agent", "--server", url, "--enroll-token",
                    token, "--data-dir", str(self.dir), "--name", self.name,
                    "--serve-port", "0", "--log-level", "WARNING"]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    def current(self) -> int | None:
        return Store(self.dir).current_vid()

    def state(self) -> AgentState:
        return Store(self.dir).load_state()

    def idle(self) -> bool:
        staging = self.dir / "staging"
        return not self.state().probation and not (
            staging.is_dir() and any(staging.iterdir()))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """Resident memory of the API process, every half second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return


def server_errors(url: str) -> int:
    """5xx answers to anyone (agents included), from the server's own request counter."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("hadmc_http_requests_total{") and 'status="5' in line))


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def publish(api: Api, model_id: int, data: bytes, profile: str) -> int:
    return int(api.ok("POST", f"/v1/models/{model_id}/versions", 201,
                      params={"profile": profile}, content=data, headers=OCTET)["id"])


def open_rollouts(api: Api) -> list[dict[str, Any]]:
    return [r for state in ("active", "paused")
            for r in api.ok("GET", "/v1/rollouts", params={"state": state})["data"]]


def explain(device_id: int, rollouts: list[dict[str, Any]],
            rows: dict[int, dict[int, dict[str, Any]]]
            ) -> tuple[int | None, dict[str, Any] | None, dict[str, Any] | None]:
    """The version the device's rollout history says it runs, with the rollout and the
    device's row that say so (the latest rollout that reached it)."""
    for r in rollouts:  # newest first
        row = rows[r["id"]].get(device_id)
        if row is None or row["status"] in ("pending", "skipped"):
            continue
        want = r["version_id"] if row["status"] == "succeeded" else row["from_version_id"]
        return want, r, row
    return None, None, None


def check(api: Api, agents: list[Agent], devices: dict[str, int], revoked: set[int],
          unfit: set[int]) -> dict[str, Any]:
    rollouts = api.ok("GET", "/v1/rollouts", params={"limit": 1000})["data"]
    rows = {r["id"]: {d["device_id"]: d for d in api.ok(
        "GET", f"/v1/rollouts/{r['id']}/devices", params={"limit": 1000})["data"]}
        for r in rollouts}
    problems = []
    for a in agents:
        dev, cur = devices[a.name], a.current()
        if a.state().probation:
            problems.append(f"{a.name}: still on probation with version {cur}")
        if cur in unfit:
            problems.append(f"{a.name}: runs version {cur}, which does not fit it")
        if dev in revoked:
            continue  # it cannot hear the server any more: it keeps what it had
        want, r, row = explain(dev, rollouts, rows)
        if cur != want:
            problems.append(f"{a.name}: runs {cur}, its history says {want} "
                            f"({row and row['status']} in rollout {r and r['id']})")
        elif r is not None and row is not None and r["state"] == "aborted" \
                and row["status"] == "succeeded" and cur == r["version_id"]:
            ev = api.ok("GET", f"/v1/rollouts/{r['id']}/events", params={"limit": 1000})
            abort = min(parse_time(e["at"]) for e in ev["data"] if e["kind"] == "abort")
            if parse_time(row["updated_at"]) > abort:
                problems.append(f"{a.name}: on aborted rollout {r['id']}'s version {cur} "
                                "with a success recorded after the abort")
    return {"problems": problems, "rollouts": len(rollouts),
            "states": {s: sum(r["state"] == s for r in rollouts)
                       for s in ("completed", "aborted", "rolled_back", "active", "paused")}}


def main() -> None:  # noqa: C901, PLR0915 - one scripted scenario, read top to bottom
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--minutes", type=float, default=5.0, help="length of the chaos phase")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--window", type=float, default=3.0, help="agents' health window (s)")
    ap.add_argument("--rss-bound-mb", type=float, default=1024.0,
                    help="most resident memory of the API process (computing a delta of "
                         "the 42 MB slow version costs a few hundred MB while it runs)")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "chaos.json"))
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="hadmc-chaos-"))
    name, db = create_database(args.pg, "hadmc_chaos")
    token = "chaos-" + os.urandom(16).hex()
    port = 18000 + rng.randrange(2000)
    env = {**os.environ, "HADMC_DATABASE_URL": db, "HADMC_ARTIFACT_DIR": str(tmp / "art"),
           "HADMC_SIGNING_KEY_FILE": str(tmp / "signing.key"), "HADMC_ADMIN_TOKEN": token,
           "HADMC_ROLLOUT_INTERVAL_SECONDS": "0.5", "HADMC_RECONCILE_INTERVAL_SECONDS": "0",
           "HADMC_EMBEDDED_WORKER": "false", "HADMC_ENROLL_RATE_PER_MINUTE": "100000",
           "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "hadmc_core.cli", "db", "upgrade"], env=env,
                   check=True, capture_output=True)
    log = tmp / "serve.log"
    server = serve(env, port, 1, log)
    url = f"http://127.0.0.1:{port}"
    api = Api(httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                           timeout=60))
    sampler = Sampler(server.pid)
    sampler.start()
    agents: list[Agent] = []
    t0 = time.monotonic()
    counts = {"rollouts": 0, "pause": 0, "resume": 0, "abort": 0, "revoke": 0, "kill": 0,
              "slow_rollouts": 0, "refused_unfit": 0}
    try:
        profile = "arm64-generic" if os.uname().machine in ("aarch64", "arm64") else "x86-avx2"
        mid = api.ok("POST", "/v1/models", 201, params={"name": "chaos", "format": "onnx"},
                     content=mlp(FAST, 1), headers=OCTET)["id"]
        good = [publish(api, mid, mlp(FAST, seed), profile) for seed in (1, 2, 3, 4)]
        slow = publish(api, mid, mlp(SLOW, 9), profile)
        orin = publish(api, mid, mlp(FAST, 5), "jetson-orin")
        other_id = api.ok("POST", "/v1/models", 201, params={"name": "other", "format": "onnx"},
                          content=mlp([16, 3], 6), headers=OCTET)["id"]
        other = publish(api, other_id, mlp([16, 3], 6), profile)
        enroll = api.ok("POST", "/v1/enrollment-tokens", 201,
                        json={"name": "chaos", "max_uses": args.agents})["token"]
        agent_env = {**os.environ, "PYTHONPATH": str(ROOT),
                     "HADMC_AGENT_POLL_SECONDS": "1", "HADMC_AGENT_HEARTBEAT_SECONDS": "5",
                     "HADMC_AGENT_REPORT_SECONDS": "1", "HADMC_AGENT_SMOKE_RUNS": "5",
                     "HADMC_AGENT_THREADS": "1", "HADMC_AGENT_LATENCY_TABLE": "false",
                     "HADMC_AGENT_HEALTH_WINDOW_SECONDS": str(args.window),
                     "HADMC_AGENT_HEALTH_CHECK_SECONDS": "1",
                     "HADMC_AGENT_HEALTH_MAX_LATENCY_RATIO": "3",
                     "HADMC_AGENT_RETRY_FAILED_SECONDS": "30"}
        agents = [Agent(i, url, enroll, tmp, agent_env) for i in range(args.agents)]
        for a in agents:
            a.start()
            time.sleep(0.2)
        deadline = time.monotonic() + 300
        devices: dict[str, int] = {}
        while len(devices) < len(agents):
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(devices)} agents enrolled")
            time.sleep(1)
            data = api.ok("GET", "/v1/devices", params={"limit": 1000})["data"]
            devices = {d["name"]: d["id"] for d in data if d["profile"]}
        print(f"{len(agents)} agents enrolled in {time.monotonic() - t0:.0f} s", flush=True)
        rss_enrolled = rss_mb(server.pid)

        def rollout(version: int, selector: dict[str, Any], **kw: Any) -> int | None:
            body = {"version_id": version, "selector": selector, "waves": [10, 40, 100],
                    "wave_timeout_seconds": 90, "max_failure_rate": 0.5,
                    "success_threshold": 0.8, "max_latency_regression": 100.0, **kw}
            r = api.call("POST", "/v1/rollouts", json=body)
            if r.status_code == 201:
                counts["rollouts"] += 1
                return int(r.json()["id"])
            print(f"  rollout of {version} refused: {r.status_code} {r.text[:200]}", flush=True)
            return None

        first = rollout(good[0], {"all": True})
        while any(r["id"] == first for r in open_rollouts(api)):
            time.sleep(1)
        print(f"v{good[0]} everywhere at {time.monotonic() - t0:.0f} s", flush=True)

        revoked: set[int] = set()
        dead: dict[int, float] = {}  # agent index -> time to restart
        end = time.monotonic() + args.minutes * 60
        current: int | None = None
        paused_until = 0.0
        while time.monotonic() < end:
            now = time.monotonic()
            for i, at in list(dead.items()):
                if now >= at:
                    agents[i].start()
                    del dead[i]
            live = [r for r in open_rollouts(api)]
            if current is not None and not any(r["id"] == current for r in live):
                current = None
            if current is None and not live:
                for r in (orin, other):  # must be refused: fits none of them
                    res = api.call("POST", "/v1/rollouts", json={
                        "version_id": r, "selector": {"all": True}})
                    counts["refused_unfit"] += res.status_code == 409
                if rng.random() < 0.2:
                    picks = rng.sample([d for d in devices.values() if d not in revoked], 4)
                    current = rollout(slow, {"device_ids": picks})
                    counts["slow_rollouts"] += current is not None
                else:
                    current = rollout(rng.choice(good), {"all": True})
            roll = rng.random()
            state = next((r["state"] for r in live if r["id"] == current), None)
            if current is not None and state == "paused" and now >= paused_until:
                api.call("POST", f"/v1/rollouts/{current}/resume")
                counts["resume"] += 1
            elif current is not None and state == "active" and roll < 0.08:
                api.call("POST", f"/v1/rollouts/{current}/pause")
                counts["pause"] += 1
                paused_until = now + rng.uniform(1, 5)
            elif current is not None and state in ("active", "paused") and roll < 0.12:
                api.call("POST", f"/v1/rollouts/{current}/abort")
                counts["abort"] += 1
            elif roll < 0.14 and len(revoked) < max(1, args.agents // 10):
                dev = rng.choice([d for d in devices.values() if d not in revoked])
                api.call("DELETE", f"/v1/devices/{dev}")
                revoked.add(dev)
                counts["revoke"] += 1
            elif roll < 0.30:
                i = rng.randrange(len(agents))
                if agents[i].alive() and i not in dead:
                    agents[i].kill()
                    dead[i] = now + rng.uniform(0.5, 3)
                    counts["kill"] += 1
            time.sleep(rng.uniform(0.2, 1.0))
        print(f"chaos over at {time.monotonic() - t0:.0f} s: {counts}", flush=True)

        for i in list(dead):
            agents[i].start()
        settle = time.monotonic() + 300
        while time.monotonic() < settle:
            live = open_rollouts(api)
            for r in live:
                if r["state"] == "paused":
                    api.call("POST", f"/v1/rollouts/{r['id']}/resume")
            if not live and all(a.idle() for a in agents):
                time.sleep(3)  # a poll or two more: nothing may still be moving
                if not open_rollouts(api) and all(a.idle() for a in agents):
                    break
            time.sleep(1)
        settled = time.monotonic() - t0
        result = check(api, agents, devices, revoked, {orin, other, slow})
        server_5xx = server_errors(url)
        tracebacks = log.read_text(errors="replace").count("Traceback")
        out = {"machine": f"{os.cpu_count()} CPUs ({os.uname().machine})",
               "agents": args.agents, "chaos_minutes": args.minutes, "seed": args.seed,
               "health_window_s": args.window, "actions": counts,
               "kills_per_agent_max": max(a.kills for a in agents),
               "revoked": len(revoked), **result,
               "bench_statuses": api.statuses, "server_5xx": server_5xx,
               "server_tracebacks": tracebacks,
               "api_rss_enrolled_mb": round(rss_enrolled, 1),
               "api_rss_peak_mb": round(sampler.peak, 1),
               "api_rss_end_mb": round(rss_mb(server.pid), 1),
               "rss_bound_mb": args.rss_bound_mb,
               "wall_s": round(settled, 1)}
        out["passed"] = (not result["problems"] and not server_5xx and not tracebacks
                         and api.statuses.get("5xx", 0) == 0
                         and sampler.peak < args.rss_bound_mb
                         and result["states"]["active"] == result["states"]["paused"] == 0)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps(out, indent=2))
        if not out["passed"]:
            raise SystemExit(1)
    finally:
        sampler.stop.set()
        for a in agents:
            a.kill()
        server.terminate()
        server.wait(20)
        drop_database(args.pg, name)


if __name__ == "__main__":
    main()
