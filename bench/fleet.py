"""Fleet benchmark: N simulated edge agents take a fine-tuned update in waves.

    python bench/fleet.py                       # 1,000 agents, 4 processes
    python bench/fleet.py --agents 50 --procs 2 # a quick look

Every agent is the real `edge_agent.Agent` (enrollment, pinned key, profile, heartbeat,
conditional desired-version poll, manifest signature and anti-rollback checks, delta
download with Range, `hadmc_core.delta.apply_delta` with every hash verified, atomic switch,
reports) with its own data directory and HTTP client. Agents share processes (the loop of
each is run by a thread pool) and skip only the ONNX Runtime smoke test, through
`NoSmokeUpdater` below, which exists in this file alone.

The server is `hadmc serve` on a fresh PostgreSQL database with Redis, on loopback. The
model pair is the INT8 ONNX export of the delta benchmark's ResNet-18 (small stem) base and
of its all-layer fine-tune (`bench/delta_scenarios.py`, scenario 4): what HAD-MC ships to a
device after a model was fine-tuned and compressed again. Phase 1 rolls v1 out to every
agent in one wave (full downloads); phase 2, the measured one, rolls v2 out in waves.

Reported: time to 100 %, server egress (bytes the server counted per device) against
N x full size and against the sum of the per-device deltas, p50/p99 latency of the agents'
API requests (time to response headers, downloads excluded) during the rollout, and errors.
Results go to bench/results/fleet.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# -- the model pair ----------------------------------------------------------------------
def model_pair(width: float) -> tuple[Path, Path]:
    from bench.delta_scenarios import make_scenarios

    _, scenarios = make_scenarios(width)
    return scenarios["4 int8"]


# -- the server ----------------------------------------------------------------------------
def start_server(tmp: Path, pg: str, redis_url: str, port: int, workers: int
                 ) -> tuple[subprocess.Popen, str, dict[str, str]]:
    from bench.service import create_database, serve

    name, url = create_database(pg, "hadmc_fleet")
    env = {**os.environ, "HADMC_DATABASE_URL": url,
           "HADMC_BROKER_URL": redis_url, "HADMC_QUEUE": f"fleet_{uuid.uuid4().hex[:6]}",
           "HADMC_ARTIFACT_DIR": str(tmp / "artifacts"),
           "HADMC_SIGNING_KEY_FILE": str(tmp / "signing.key"),
           "HADMC_ENROLL_RATE_PER_MINUTE": "1000000", "HADMC_ROLLOUT_INTERVAL_SECONDS": "1"}
    hadmc = str(Path(sys.executable).parent / "hadmc")
    subprocess.run([hadmc, "db", "upgrade"], env=env, check=True, capture_output=True)
    token = subprocess.run([hadmc, "token", "create"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip().splitlines()[-1]
    proc = serve(env, port, workers, tmp / "serve.log")
    return proc, name, {"Authorization": f"Bearer {token}"}


# -- the agents (run in worker processes) ---------------------------------------------------
def _no_smoke_updater():  # type: ignore[no-untyped-def]
    from edge_agent.smoke import SmokeResult
    from edge_agent.update import Updater

    class NoSmokeUpdater(Updater):
        """The benchmark's only change to the agent: no ONNX Runtime smoke test."""

        def _smoke(self, a, staged):  # type: ignore[no-untyped-def]
            a.phase = "smoke"
            return SmokeResult(p50_ms=1.0, p95_ms=1.0, p99_ms=1.0, max_abs_err=None)

    return NoSmokeUpdater


def _timed_transport(samples: list, errors: dict):  # type: ignore[no-untyped-def]
    import httpx

    from edge_agent.client import KEEPALIVE_EXPIRY_SECONDS

    class Timed(httpx.HTTPTransport):  # the agent's own transport settings, timed
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            t0 = time.perf_counter()
            try:
                resp = super().handle_request(request)
            except httpx.HTTPError as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                raise
            path = request.url.path
            download = path.endswith(("/delta", "/model.onnx", "/probe", "/manifest"))
            samples.append((time.time(), time.perf_counter() - t0, download))
            if resp.status_code >= 500 or resp.status_code in (401, 403, 409, 422, 429):
                key = f"{resp.status_code} {request.method} {path.split('/')[-1]}"
                errors[key] = errors.get(key, 0) + 1
            return resp

    return Timed(limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS))


def agent_worker(idx: int, count: int, server: str, token: str, root: str, threads: int,
                 stop_at: float, out: mp.Queue) -> None:
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from edge_agent.agent import Agent
    from edge_agent.settings import AgentSettings

    logging.basicConfig(level=logging.ERROR)
    samples: list = []
    errors: dict[str, int] = {}
    updater_cls = _no_smoke_updater()
    agents: list[Agent] = []
    for i in range(count):
        s = AgentSettings(server_url=server, enrollment_token=token, name=f"sim-{idx}-{i}",
                          data_dir=Path(root) / f"a{idx}-{i}", serve_port=0,
                          latency_table=False, smoke_runs=3,
                          health_window_seconds=0)  # delivery is measured, not health
        a = Agent(s, transport=_timed_transport(samples, errors))
        a.start()
        a.updater = updater_cls(settings=s, store=a.store, client=a.client, key=a.key,
                                device_id=a.device_id, state=a.state)
        agents.append(a)
    out.put(("ready", idx, [a.device_id for a in agents]))
    done = threading.Event()

    def drive(mine: list[Agent]) -> None:
        while not done.is_set() and time.time() < stop_at:
            wait = min((a.loop.run_once() for a in mine), default=1.0)
            done.wait(min(max(wait, 0.05), 0.5))

    slices = [agents[k::threads] for k in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(drive, s) for s in slices if s]
        while time.time() < stop_at:
            time.sleep(0.5)
            if os.path.exists(Path(root) / "STOP"):
                break
        done.set()
        for f in futures:
            f.result()
    failed = sum(1 for a in agents for v in a.failed)
    for a in agents:
        a.close()
    out.put(("done", idx, {"samples": samples, "errors": errors, "failed_updates": failed}))


# -- the rollout ---------------------------------------------------------------------------
def wait_rollout(api: Any, rid: int, timeout: float) -> tuple[dict, float]:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        r = api.get(f"/v1/rollouts/{rid}").json()
        if r["state"] in ("completed", "aborted", "rolled_back"):
            return r, time.perf_counter() - t0
        time.sleep(0.5)
    raise SystemExit(f"rollout {rid} did not finish in {timeout:.0f} s: {r}")


def egress(api: Any, rid: int) -> int:
    total, offset = 0, 0
    while True:
        page = api.get(f"/v1/rollouts/{rid}/devices",
                       params={"offset": offset, "limit": 500}).json()
        total += sum(int(d.get("bytes_sent") or 0) for d in page["data"])
        offset += len(page["data"])
        if not page["data"] or offset >= page["count"]:
            return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4, help="agent processes")
    ap.add_argument("--threads", type=int, default=16, help="loop threads per process")
    ap.add_argument("--width", type=float, default=0.25, help="ResNet-18 width of the model")
    ap.add_argument("--waves", default="5,25,100")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fleet.json")
    args = ap.parse_args()
    import httpx

    v1, v2 = model_pair(args.width)
    tmp = Path(f"/tmp/hadmc-fleet-{uuid.uuid4().hex[:6]}")
    tmp.mkdir(parents=True)
    proc, dbname, auth = start_server(tmp, args.postgres, args.redis, args.port, args.workers)
    server = f"http://127.0.0.1:{args.port}"
    api = httpx.Client(base_url=server, headers=auth, timeout=60)
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    workers: list = []
    try:
        result = run(args, api, server, v1, v2, tmp, ctx, out, workers)
    finally:
        (tmp / "agents" / "STOP").parent.mkdir(parents=True, exist_ok=True)
        (tmp / "agents" / "STOP").touch()
        for w in workers:
            w.join(120)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        from bench.service import drop_database

        drop_database(args.postgres, dbname)
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _publish(api: Any, model_id: int, path: Path) -> dict:
    r = api.post(f"/v1/models/{model_id}/versions", params={"profile": "x86-avx2"},
                 content=path.read_bytes(), headers={"Content-Type": "application/octet-stream"})
    r.raise_for_status()
    return r.json()


def _rollout(api: Any, version_id: int, waves: list[float], n: int) -> int:
    r = api.post("/v1/rollouts", json={
        "version_id": version_id, "selector": {"all": True}, "waves": waves,
        "min_devices_per_wave": max(1, n // 100), "success_threshold": 0.99,
        "max_failure_rate": 0.01, "max_latency_regression": 10.0,
        "wave_timeout_seconds": 900})
    r.raise_for_status()
    return int(r.json()["id"])


def run(args: argparse.Namespace, api: Any, server: str, v1: Path, v2: Path, tmp: Path,
        ctx: Any, out: Any, workers: list) -> dict:
    r = api.post("/v1/models", params={"name": "fleet-resnet18-int8", "format": "onnx"},
                 content=v1.read_bytes(), headers={"Content-Type": "application/octet-stream"})
    r.raise_for_status()
    model_id = r.json()["id"]
    ver1, ver2 = _publish(api, model_id, v1), _publish(api, model_id, v2)
    enroll = api.post("/v1/enrollment-tokens", json={"name": "fleet", "max_uses": args.agents,
                                                     "expires_in_seconds": 86400}).json()
    per = [args.agents // args.procs + (1 if i < args.agents % args.procs else 0)
           for i in range(args.procs)]
    stop_at = time.time() + args.timeout
    t_enroll = time.perf_counter()
    for i, n in enumerate(per):
        w = ctx.Process(target=agent_worker, args=(i, n, server, enroll["token"],
                                                   str(tmp / "agents"), args.threads,
                                                   stop_at, out))
        w.start()
        workers.append(w)
    for _ in per:
        msg = out.get(timeout=args.timeout)
        assert msg[0] == "ready", msg
    enroll_s = time.perf_counter() - t_enroll
    print(f"{args.agents} agents enrolled in {enroll_s:.1f} s", flush=True)

    r1, t1 = wait_rollout(api, _rollout(api, ver1["id"], [100.0], args.agents), args.timeout)
    print(f"phase 1 (v1, full files): {r1['state']} in {t1:.1f} s", flush=True)
    waves = [float(w) for w in args.waves.split(",")]
    t_start = time.time()
    rid2 = _rollout(api, ver2["id"], waves, args.agents)
    r2, t2 = wait_rollout(api, rid2, args.timeout)
    t_end = time.time()
    print(f"phase 2 (v2, waves {waves}): {r2['state']} in {t2:.1f} s", flush=True)
    (tmp / "agents" / "STOP").touch()
    lat, errors, failed = [], {}, 0
    for _ in per:
        msg = out.get(timeout=300)
        data = msg[2]
        lat += [s for ts, s, dl in data["samples"] if not dl and t_start <= ts <= t_end]
        for k, v in data["errors"].items():
            errors[k] = errors.get(k, 0) + v
        failed += data["failed_updates"]
    events = api.get(f"/v1/rollouts/{rid2}/events", params={"limit": 100}).json()["data"]
    delta = api.get(f"/v1/versions/{ver2['id']}/delta", params={"from": ver1["id"]})
    sent2, delta_bytes = egress(api, rid2), len(delta.content)
    lat.sort()
    return {
        "agents": args.agents, "procs": args.procs, "threads": args.threads,
        "uvicorn_workers": args.workers, "cpus": os.cpu_count(), "waves": waves,
        "model": f"resnet18 small stem width {args.width:g}, INT8 QDQ ONNX (bench scenario 4)",
        "full_bytes": ver2["onnx_size"], "delta_bytes": delta_bytes,
        "enroll_s": round(enroll_s, 1), "phase1_s": round(t1, 1), "phase1_state": r1["state"],
        "time_to_100_s": round(t2, 1), "state": r2["state"],
        "wave_counts": r2.get("wave_counts"),
        "egress_bytes": sent2, "full_bytes_x_agents": ver2["onnx_size"] * args.agents,
        "egress_vs_full": round(sent2 / (ver2["onnx_size"] * args.agents), 4),
        "sum_of_deltas": delta_bytes * args.agents,
        "egress_le_sum_of_deltas": sent2 <= delta_bytes * args.agents,
        "api_requests": len(lat),
        "api_p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "api_p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 1) if lat else None,
        "errors": errors, "failed_updates": failed,
        "decisions": [f"{e['kind']}: {e['reason']}" for e in events],
    }


if __name__ == "__main__":
    main()
