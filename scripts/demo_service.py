"""The main job end to end on embedded defaults (SQLite, local artifacts, in-process worker):

    python scripts/demo_service.py --weights runs/base.safetensors --width 0.25

1. `hadmc serve` (no Postgres, no Redis) and a user token;
2. upload the trained baseline and name the Fashion-MNIST dataset;
3. a compression job for this machine's profile, its progress printed as it runs;
4. an edge agent (`hadmc-agent run`) enrolls with a one-time token;
5. a rollout of the compressed version to every device; the agent downloads it, verifies
   the signed manifest and every hash, smoke-tests it, switches, and commits it after a
   10-second health window (the rollout succeeds at the commit);
6. one Fashion-MNIST test image is classified through the agent's loopback endpoint;
7. baseline and compressed side by side (accuracy, latency, size, speedup from the job's
   report; latency measured on the device by the agent) and the dashboard's address.

Everything lives under --workdir (default runs/service). Both processes are stopped at the
end; run from a terminal, they keep running for the dashboard until Enter is pressed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from hadmc_core.references import lines as reference_lines

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float, every: float = 1.0) -> Any:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"error: {what} did not happen within {timeout:.0f} s")


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def run_job(api: httpx.Client, args: argparse.Namespace) -> dict:
    model = api.post("/v1/models", params={"name": "demo-resnet18", "arch": "resnet18",
                                           "stem": "small", "width": args.width},
                     content=args.weights.read_bytes(),
                     headers={"Content-Type": "application/octet-stream"})
    model.raise_for_status()
    data = api.post("/v1/datasets", json={"builtin": args.data})
    data.raise_for_status()
    r = api.post("/v1/jobs", json={
        "model_id": model.json()["id"], "dataset_id": data.json()["id"], "profile": args.profile,
        "constraints": {"max_accuracy_drop": args.max_accuracy_drop}})
    if r.status_code != 202:
        raise SystemExit(f"error: job refused: {r.json().get('detail')}")
    job = r.json()
    print(f"job {job['id']} queued", flush=True)
    last = None
    while True:
        job = api.get(f"/v1/jobs/{job['id']}").json()
        line = f"  {job['state']:<9} {job['stage'] or '':<14} {job['percent'] or 0:5.1f}%"
        if line != last:
            print(line, flush=True)
            last = line
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(2)
    if job["state"] != "succeeded":
        raise SystemExit(f"error: the job {job['state']}: {job['error']}")
    return api.get(f"/v1/versions/{job['version_id']}").json()


def roll_out(api: httpx.Client, version: dict) -> int:
    r = api.post("/v1/rollouts", json={"version_id": version["id"], "selector": {"all": True},
                                       "waves": [100], "max_latency_regression": 10.0})
    if r.status_code != 201:
        raise SystemExit(f"error: the rollout was refused: {r.status_code} "
                         f"{r.json().get('detail', r.text)}")
    rid = r.json()["id"]
    done = wait_for("the rollout", lambda: (lambda x: x if x["state"] != "active" else None)(
        api.get(f"/v1/rollouts/{rid}").json()), 600)
    for e in api.get(f"/v1/rollouts/{rid}/events").json()["data"]:
        print(f"  rollout {rid}: {e['kind']}: {e['reason']}")
    if done["state"] != "completed":
        raise SystemExit(f"error: the rollout ended {done['state']}")
    return rid


def classify(port: int, data: str) -> None:
    from hadmc_core.data import load_dataset

    test = load_dataset(data).test
    x, y = test.x[:1], int(test.y[0])
    r = httpx.post(f"http://127.0.0.1:{port}/v1/infer", json={"input": x.tolist()}, timeout=30)
    r.raise_for_status()
    logits = next(iter(r.json()["outputs"].values()))[0]
    pred = max(range(len(logits)), key=logits.__getitem__)
    print(f"agent on version {r.json()['version_id']}: test image 0 -> class {pred} "
          f"(label {y})")


def device_p50_ms(api: httpx.Client, rollout_id: int) -> float | None:
    """Median of the p50 latencies the rollout's devices reported after updating."""
    devices = api.get(f"/v1/rollouts/{rollout_id}/devices").json()["data"]
    p50s = [d["p50_ms"] for d in devices if d["p50_ms"] is not None]
    return statistics.median(p50s) if p50s else None


def side_by_side(report: dict[str, Any], on_device_ms: float | None, dashboard: str) -> str:
    """Baseline and compressed side by side: accuracy, latency and size from the job's
    report (docs/report.md), the latency the agent measured on the device, the dashboard."""
    b, c, s = report["baseline"], report["compressed"], report["summary"]
    device = f"{on_device_ms:.3f} ms" if on_device_ms is not None else "not reported"
    rows = [("", "baseline", "compressed", ""),
            ("top-1 (test split)", f"{b['accuracy']:.2f} %", f"{c['accuracy']:.2f} %",
             f"{-s['accuracy_drop_points']:+.2f} points"),
            ("latency (job, ORT)", f"{b['latency_ms']:.3f} ms", f"{c['latency_ms']:.3f} ms",
             f"{s['speedup']:.2f}x speedup (median, batch 1)"),
            ("latency (device)", "-", device, "p50 the agent measured after the update"),
            ("size (ONNX file)", f"{b['size_bytes'] / 1e6:.2f} MB",
             f"{c['size_bytes'] / 1e6:.2f} MB", f"{s['compression']:.2f}x smaller")]
    lines = [f"{a:<20}{x:>12}{y:>14}   {z}".rstrip() for a, x, y, z in rows]
    lines.append(f"constraints: {report['constraints']['message']}")
    refs = report.get("references") or {}
    if refs.get("rows"):
        lines.append("what you could run instead, measured in the same job on this CPU:")
        lines += [f"  {line}" for line in reference_lines(refs)]
    lines += [f"warning: {w}" for w in report.get("warnings", [])]
    lines.append(f"dashboard: {dashboard}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--profile", default="arm64-generic" if platform.machine() in (
        "aarch64", "arm64") else "x86-avx2", help="built-in target profile (default: this "
                    "machine's kind, so the rollout fits the local agent)")
    ap.add_argument("--max-accuracy-drop", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=Path("runs/service"))
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    port, agent_port = free_port(), free_port()
    env = {**os.environ, "HADMC_DATABASE_URL": f"sqlite:///{work}/hadmc.db",
           "HADMC_ARTIFACT_DIR": str(work / "artifacts"),
           "HADMC_SIGNING_KEY_FILE": str(work / "signing.key"),
           "HADMC_ROLLOUT_INTERVAL_SECONDS": "2"}
    env.pop("HADMC_BROKER_URL", None)
    # token create also creates the SQLite database and migrates it (so does serve)
    token = subprocess.run([BIN / "hadmc", "token", "create"], env=env, check=True,
                           capture_output=True, text=True).stdout.split()[-1]
    procs = [start([str(BIN / "hadmc"), "serve", "--port", str(port)], env, work / "serve.log")]
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                           headers={"Authorization": f"Bearer {token}"})
        wait_for("hadmc serve", lambda: _ok(api, "/readyz"), 60, 0.3)
        print(f"hadmc serve on :{port} (SQLite, in-process worker; log {work}/serve.log)")
        version = run_job(api, args)
        s = version["summary"]
        print(f"version {version['id']}: top-1 {s.get('accuracy', 0):.2f}%, latency "
              f"{s.get('latency_ms', 0):.3f} ms, {version['onnx_size'] / 1e6:.2f} MB "
              f"(constraints met: {version['constraints_met']})")
        enroll = api.post("/v1/enrollment-tokens", json={"name": "demo"}).json()["token"]
        procs.append(start([str(BIN / "hadmc-agent"), "run", "--server", str(api.base_url),
                            "--enroll-token", enroll, "--data-dir", str(work / "agent"),
                            "--serve-port", str(agent_port), "--name", "demo-agent"],
                           {**env, "HADMC_AGENT_POLL_SECONDS": "2",
                            # commit after 10 s of health checks (default: 5 minutes)
                            "HADMC_AGENT_HEALTH_WINDOW_SECONDS": "10",
                            "HADMC_AGENT_HEALTH_CHECK_SECONDS": "2"}, work / "agent.log"))
        # a rollout goes only to devices whose reported hardware fits the version
        wait_for("the agent's enrollment and hardware profile", lambda: any(
            d["profile"] for d in api.get("/v1/devices").json()["data"]), 60)
        print(f"hadmc-agent enrolled (data dir {work}/agent; log {work}/agent.log)")
        rollout_id = roll_out(api, version)
        wait_for("the agent's switch", lambda: _ok_port(agent_port), 60, 0.5)
        classify(agent_port, args.data)
        report = api.get(f"/v1/versions/{version['id']}/report").json()
        token_file = work / "token"
        token_file.touch(mode=0o600)
        token_file.chmod(0o600)
        token_file.write_text(token + "\n")
        print("\n" + side_by_side(report, device_p50_ms(api, rollout_id),
                                  f"http://127.0.0.1:{port}/ui (log in with the token in "
                                  f"{token_file})"))
        if sys.stdin.isatty():
            with contextlib.suppress(EOFError, KeyboardInterrupt):
                input("the server and the agent keep running; press Enter to stop them ")
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)


def _ok(api: httpx.Client, path: str) -> bool:
    try:
        return api.get(path).status_code == 200
    except httpx.HTTPError:
        return False


def _ok_port(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
