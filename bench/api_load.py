"""API load: N simulated devices heartbeating every T seconds against `hadmc serve`.

    python bench/api_load.py --devices 10000 --interval 30 --duration 120

Creates a fresh PostgreSQL database (dropped at the end), enrolls the devices (rows with
hashed credentials, written directly), starts `hadmc serve` with Postgres + Redis, then
sends heartbeats open-loop at devices/interval requests per second: each request is sent
at its scheduled time whether or not earlier ones have answered, and its latency is counted
from that scheduled time (no coordinated omission). Prints p50/p90/p99/max and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

from cloud_service import migrate, security
from cloud_service.db import make_engine, utcnow
from cloud_service.models import Device

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.service import create_database, drop_database, serve  # noqa: E402


def setup_database(admin_dsn: str, devices: int) -> tuple[str, str, list[tuple[int, str]]]:
    name, url = create_database(admin_dsn, "hadmc_bench")
    migrate.upgrade(url)
    creds = [security.new_token(security.DEVICE_PREFIX) for _ in range(devices)]
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(Device.__table__.insert(),  # type: ignore[attr-defined]
                     [{"name": f"sim-{i}", "credential_hash": security.hash_token(c),
                       "created_at": utcnow()}
                      for i, c in enumerate(creds)])
        ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM devices ORDER BY id")]
    engine.dispose()
    return name, url, list(zip(ids, creds, strict=True))


def start_server(url: str, redis_url: str, port: int, workers: int, tmp: Path
                 ) -> subprocess.Popen:
    env = {**os.environ, "HADMC_DATABASE_URL": url, "HADMC_BROKER_URL": redis_url,
           "HADMC_ARTIFACT_DIR": str(tmp / "artifacts"),
           "HADMC_SIGNING_KEY_FILE": str(tmp / "signing.key"),
           "HADMC_QUEUE": f"bench_{uuid.uuid4().hex[:6]}"}
    return serve(env, port, workers, tmp / "serve.log")


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def load(port: int, devices: list[tuple[int, str]], interval: float, duration: float,
               connections: int) -> dict:
    """Open loop over ``connections`` keep-alive HTTP/1.1 connections (plain asyncio
    streams: the generator must cost far less CPU than the server it measures)."""
    rate = len(devices) / interval
    total = int(rate * duration)
    lat: list[float] = []
    errors: dict[str, int] = {}
    queue: asyncio.Queue = asyncio.Queue()
    body = b'{"status": "ok"}'

    def request(i: int) -> bytes:
        dev_id, cred = devices[i % len(devices)]
        return (f"POST /v1/devices/{dev_id}/heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {cred}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def connection() -> None:
        reader = writer = None
        while True:
            item = await queue.get()
            if item is None:
                break
            i, scheduled = item
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request(i))
                status = await asyncio.wait_for(_read_response(reader), 30)  # type: ignore[arg-type]
                if status != 200:
                    errors[str(status)] = errors.get(str(status), 0) + 1
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                if writer is not None:
                    writer.close()
                reader = writer = None
            lat.append(time.perf_counter() - scheduled)
        if writer is not None:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    t0 = time.perf_counter() + 0.5
    for i in range(total):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, scheduled))
    sent = time.perf_counter() - t0
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"devices": len(devices), "interval_s": interval, "duration_s": duration,
            "target_rps": round(rate, 1), "requests": total,
            "sent_rps": round(total / sent, 1), "completed_rps": round(total / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p90_ms": round(float(np.percentile(ms, 90)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1), "errors": errors,
            "connections": connections}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10000)
    ap.add_argument("--interval", type=float, default=30.0)
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--out", type=Path, default=Path("bench/api_load.json"))
    args = ap.parse_args()
    tmp = Path(f"/tmp/hadmc-bench-{uuid.uuid4().hex[:6]}")
    tmp.mkdir(parents=True)
    name, url, devices = setup_database(args.postgres, args.devices)
    proc = start_server(url, args.redis, args.port, args.workers, tmp)
    try:
        cpu0 = cpu_seconds(proc.pid)
        res = asyncio.run(load(args.port, devices, args.interval, args.duration,
                               args.connections))
        cpu = cpu_seconds(proc.pid) - cpu0
        res["server_cpu_seconds"] = round(cpu, 1)
        res["requests_per_server_cpu_second"] = round(res["requests"] / cpu, 1) if cpu else None
        engine = make_engine(url)
        with engine.connect() as conn:
            seen = conn.exec_driver_sql(
                "SELECT count(*) FROM devices WHERE last_seen_at IS NOT NULL").scalar()
        engine.dispose()
        res.update({"uvicorn_workers": args.workers, "devices_seen": seen,
                    "cpus": os.cpu_count()})
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        drop_database(args.postgres, name)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
