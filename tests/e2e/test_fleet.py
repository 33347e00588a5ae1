"""End to end: a real ``hadmc serve`` (PostgreSQL + Redis, free loopback port), a real
``hadmc worker --beat`` (the Celery beat task is the only rollout scheduler here: the API's
scheduler thread is off) and three ``hadmc-agent`` processes. Versions are published with
``POST /v1/models/{id}/versions`` and rolled out; a chunk corrupted in the server's store is
refused by every agent, which reports the mismatch and keeps v1; a delta costs far less
than the full file; an agent killed with SIGKILL in the middle of an update converges after
a restart; a rollback (signed orders) brings every device back; a version whose probe fails
the smoke test aborts its rollout and every device stays where it was.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and Redis on 127.0.0.1:6379, as
the cloud tests do; about 40-60 s.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hadmc_core.hal import onnxwrite as ow
from tests.e2e.helpers import (
    HADMC,
    ROOT,
    Agent,
    Server,
    database,
    local_profile,
    ok,
    rollout,
    rollout_state,
    server_env,
    start_server,
    stop,
    wait_for,
)

REDIS = os.environ.get("HADMC_TEST_REDIS_E2E", "redis://127.0.0.1:6379/13")
pytestmark = pytest.mark.slow
__all__ = ["database"]  # the module-scoped fixture


def model(head_seed: int) -> bytes:
    """x[N,256] → 256x2048 → 2048x2048 → 2048x4 (about 18 MB). Versions differ only in the
    head (a fine-tuned classifier), so a delta is a small fraction of the file."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((256, 2048)).astype(np.float32) * 0.05
    w2 = rng.standard_normal((2048, 2048)).astype(np.float32) * 0.02
    w3 = np.random.default_rng(head_seed).standard_normal((2048, 4)).astype(np.float32) * 0.1
    nodes = [ow.node("MatMul", ["x", "w1"], ["h1"]), ow.node("Relu", ["h1"], ["r1"]),
             ow.node("MatMul", ["r1", "w2"], ["h2"]), ow.node("Relu", ["h2"], ["r2"]),
             ow.node("MatMul", ["r2", "w3"], ["y"])]
    return ow.model(nodes, [ow.value_info("x", ["N", 256])], [ow.value_info("y", ["N", 4])],
                    [ow.tensor("w1", w1), ow.tensor("w2", w2), ow.tensor("w3", w3)])


@pytest.fixture(scope="module")
def server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    env = server_env(database, tmp, HADMC_BROKER_URL=REDIS, HADMC_ROLLOUT_INTERVAL_SECONDS="0",
                     HADMC_QUEUE=f"e2e_{uuid.uuid4().hex[:8]}")
    srv = start_server(env, tmp)
    with (tmp / "worker.log").open("wb") as out:  # the rollout scheduler (beat)
        worker = subprocess.Popen([*HADMC, "worker", "--beat"], cwd=ROOT, stdout=out,
                                  stderr=subprocess.STDOUT,
                                  env={**env, "HADMC_ROLLOUT_INTERVAL_SECONDS": "0.5"})
    yield srv
    srv.admin.close()
    stop(worker, srv.proc)


def test_fleet(server: Server, tmp_path: Path) -> None:
    s = server
    versions = {n: model(head) for n, head in ((1, 1), (2, 2), (3, 3), (4, 4))}
    profile = local_profile()
    mid = ok(s.admin.post("/v1/models", params={"name": "mlp", "format": "onnx"},
                          content=versions[1], headers=s.octet), 201)["id"]
    vids = {n: ok(s.admin.post(f"/v1/models/{mid}/versions", params={"profile": profile},
                               content=data, headers=s.octet), 201)["id"]
            for n, data in versions.items()}
    token = ok(s.admin.post("/v1/enrollment-tokens",
                            json={"name": "e2e", "max_uses": 3}), 201)["token"]
    agents = [Agent(i, s, token, tmp_path) for i in range(3)]
    try:
        for a in agents:
            a.start()
        def enrolled() -> list[dict[str, Any]] | None:
            data = ok(s.admin.get("/v1/devices"))["data"]
            return data if len(data) == 3 and all(d["profile"] for d in data) else None

        wait_for(enrolled, "3 enrolled devices with profiles", 60)
        wait_for(lambda: [d for d in ok(s.admin.get("/v1/devices"))["data"]
                          if d["name"] == "agent-0" and (d["latency"] or {}).get("operators")],
                 "agent-0's operator latency table", 60)

        # v1 everywhere (full downloads), in one wave
        r1 = rollout(s, vids[1], [100])
        wait_for(lambda: rollout_state(s, r1) == "completed", "rollout 1 to complete")
        assert [a.current() for a in agents] == [vids[1]] * 3

        # v4's delta is computed and stored, then one of its chunks is altered on the server
        delta = s.admin.get(f"/v1/versions/{vids[4]}/delta", params={"from": vids[1]})
        stored = s.artifacts / "objects" / delta.headers["ETag"].strip('"')[:2] / \
            delta.headers["ETag"].strip('"')
        assert stored.read_bytes() == delta.content
        stored.chmod(0o644)
        with stored.open("r+b") as f:  # a byte in the payload (the last bytes of the file)
            f.seek(-100, os.SEEK_END)
            byte = f.read(1)
            f.seek(-100, os.SEEK_END)
            f.write(bytes([byte[0] ^ 0xFF]))
        r4 = rollout(s, vids[4], [100])
        wait_for(lambda: rollout_state(s, r4) == "aborted", "the corrupt rollout to abort", 60)
        rows = ok(s.admin.get(f"/v1/rollouts/{r4}/devices"))["data"]
        assert [r["status"] for r in rows] == ["failed"] * 3, rows
        assert all("chunk w3#" in (r["reason"] or "") and "corrupt" in (r["reason"] or "")
                   for r in rows), rows  # the first failing chunk is named
        assert [a.current() for a in agents] == [vids[1]] * 3

        # v2 in two waves; SIGKILL the first agent seen mid-update, then restart it
        r2 = rollout(s, vids[2], [34, 100])
        victim = wait_for(lambda: next((a for a in agents if a.busy()), None),
                          "an agent to start updating", 30, every=0.002)
        os.kill(victim.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        victim.proc.wait()  # type: ignore[union-attr]
        victim.start()
        wait_for(lambda: rollout_state(s, r2) == "completed", "rollout 2 to complete", 90)
        assert [a.current() for a in agents] == [vids[2]] * 3
        rows = ok(s.admin.get(f"/v1/rollouts/{r2}/devices"))["data"]
        full = len(versions[2])
        assert all(0 < row["bytes_sent"] < full // 4 for row in rows), (full, rows)
        assert all(row["status"] == "succeeded" and row["p50_ms"] for row in rows), rows

        # roll rollout 2 back: signed rollback orders; v1 is still held, nothing downloaded
        ok(s.admin.post(f"/v1/rollouts/{r2}/rollback"))
        wait_for(lambda: [a.current() for a in agents] == [vids[1]] * 3, "rollback to v1", 60)
        wait_for(lambda: all(r["status"] == "rolled_back" for r in ok(
            s.admin.get(f"/v1/rollouts/{r2}/devices"))["data"]), "rolled_back rows", 30)

        # v3 with a probe whose expected outputs are wrong: the smoke test fails, abort
        buf = io.BytesIO()
        x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
        np.savez(buf, inputs=x, outputs=np.full((2, 4), 1e3, np.float32),
                 atol=np.float32(1e-4), rtol=np.float32(1e-3))
        ok(s.admin.put(f"/v1/versions/{vids[3]}/probe", content=buf.getvalue(),
                       headers=s.octet))
        r3 = rollout(s, vids[3], [34, 100])
        wait_for(lambda: rollout_state(s, r3) == "aborted", "rollout 3 to abort", 60)
        rows = ok(s.admin.get(f"/v1/rollouts/{r3}/devices"))["data"]
        assert sorted(r["status"] for r in rows) == ["failed", "failed", "pending"], rows
        assert all("outputs differ" in (r["reason"] or "") for r in rows
                   if r["status"] == "failed")
        time.sleep(1.0)
        assert [a.current() for a in agents] == [vids[1]] * 3
        assert all(a.proc is not None and a.proc.poll() is None for a in agents)
    finally:
        for a in agents:
            a.stop()
        tails = {a.name: a.log.read_text()[-1500:] for a in agents if a.log.exists()}
        print(tails, s.log.read_text()[-2000:])
