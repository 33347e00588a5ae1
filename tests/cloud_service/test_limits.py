"""Request limits: JSON body size (413), the bearer token checked before a body is read
(401), and slow clients (headers or bodies a byte at a time) against a real ``hadmc serve``
on loopback, while a healthy client keeps being served."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_service import migrate
from cloud_service.app import create_app
from tests.cloud_service.conftest import make_onnx, make_settings, new_user_token

HADMC = str(Path(sys.executable).parent / "hadmc")
ADMIN = "limits-test-admin-token-0123456789"
JSON_LIMIT_KB = 4
TIMEOUT_S = 2.0  # header and body timeouts of the real server


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict]]:
    """An app (SQLite) whose JSON limit is 4 KiB, and a user token."""
    settings = make_settings(tmp_path_factory.mktemp("limits"), max_json_body_kb=JSON_LIMIT_KB)
    migrate.upgrade(settings.database_url)
    with TestClient(create_app(settings)) as c:
        yield c, {"Authorization": f"Bearer {new_user_token(settings)}"}


def _problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    return r.json()


def test_json_body_over_the_limit_is_413(small: tuple[TestClient, dict]) -> None:
    client, auth = small
    body = b'{"name": "' + b"x" * (JSON_LIMIT_KB * 1024) + b'"}'
    r = client.post("/v1/enrollment-tokens", content=body,
                    headers={**auth, "Content-Type": "application/json"})
    detail = _problem(r, 413)["detail"]
    assert "HADMC_MAX_JSON_BODY_KB" in detail and str(JSON_LIMIT_KB * 1024) in detail
    assert r.headers["connection"] == "close"


def test_chunked_json_body_over_the_limit_is_413(small: tuple[TestClient, dict]) -> None:
    client, auth = small
    chunks = [b'{"name": "', *[b"x" * 1024] * (JSON_LIMIT_KB + 1), b'"}']
    r = client.post("/v1/enrollment-tokens", content=iter(chunks),
                    headers={**auth, "Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    assert "HADMC_MAX_JSON_BODY_KB" in _problem(r, 413)["detail"]


def test_json_body_under_the_limit_is_served(small: tuple[TestClient, dict]) -> None:
    client, auth = small
    r = client.post("/v1/enrollment-tokens", json={"name": "x" * 100}, headers=auth)
    assert r.status_code == 201, r.text


def test_uploads_keep_their_own_limit(small: tuple[TestClient, dict], tmp_path: Path) -> None:
    client, auth = small
    onnx = make_onnx(tmp_path / "m.onnx", np.ones((64, 64), np.float32)).read_bytes()
    assert len(onnx) > JSON_LIMIT_KB * 1024
    r = client.post("/v1/models", params={"name": "big", "format": "onnx"}, content=onnx,
                    headers={**auth, "Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    r = client.post("/v1/models", params={"name": "huge", "format": "onnx"},
                    content=b"\0" * (5 * 2**20),  # over HADMC_MAX_UPLOAD_MB=4
                    headers={**auth, "Content-Type": "application/octet-stream"})
    assert "HADMC_MAX_UPLOAD_MB" in _problem(r, 413)["detail"]


def test_missing_token_is_401_before_the_body_is_read(small: tuple[TestClient, dict]) -> None:
    """The body here is not even JSON: it is never read, so the answer is 401, not 422."""
    client, _ = small
    for path in ("/v1/jobs", "/v1/enrollment-tokens", "/v1/devices/1/heartbeat"):
        r = client.post(path, content=b"{not json",
                        headers={"Content-Type": "application/json"})
        assert _problem(r, 401)["detail"].startswith("missing bearer token")
        assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/v1/jobs", content=b"x" * 100_000, headers={
        "Content-Type": "application/json", "Authorization": "Basic dXNlcjpwYXNz"})
    _problem(r, 401)


def test_public_endpoint_still_reads_its_body(small: tuple[TestClient, dict]) -> None:
    client, _ = small
    r = client.post("/v1/devices/register", content=b"{not json",
                    headers={"Content-Type": "application/json"})
    _problem(r, 422)


# A real server on loopback ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("serve")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADMC_")}
    env.update({"HADMC_DATABASE_URL": f"sqlite:///{tmp / 'hadmc.db'}",
                "HADMC_ARTIFACT_DIR": str(tmp / "artifacts"),
                "HADMC_SIGNING_KEY_FILE": str(tmp / "signing.key"),
                "HADMC_ADMIN_TOKEN": ADMIN, "HADMC_EMBEDDED_WORKER": "false",
                "HADMC_RECONCILE_INTERVAL_SECONDS": "0", "HADMC_ROLLOUT_INTERVAL_SECONDS": "0",
                "HADMC_HEADER_TIMEOUT_SECONDS": str(TIMEOUT_S),
                "HADMC_BODY_TIMEOUT_SECONDS": str(TIMEOUT_S)})
    subprocess.run([HADMC, "db", "upgrade"], env=env, check=True, capture_output=True,
                   timeout=120)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp / "serve.log"
    proc = subprocess.Popen([HADMC, "serve", "--port", str(port)], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, \
                log.read_text()[-3000:]
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def _open(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _answer(sock: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``within`` s pass)."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {within} s; got {data[:200]!r}")
    except ConnectionResetError:
        pass
    return data


def _raw(url: str, head: str, body: bytes) -> tuple[bytes, float]:
    with _open(url) as sock:
        t0 = time.monotonic()
        sock.sendall(head.encode() + body)
        data = _answer(sock, 5)
        return data, time.monotonic() - t0


def test_huge_body_without_token_is_401_without_reading_it(server: str) -> None:
    """60 MB announced, two bytes sent: the answer comes at once and the connection closes."""
    head = ("POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 60000000\r\n\r\n")
    data, took = _raw(server, head, b'{"')
    assert data.startswith(b"HTTP/1.1 401 "), data[:300]
    assert b"application/problem+json" in data and b"missing bearer token" in data
    assert took < TIMEOUT_S

    bogus = head.replace("Host: x\r\n", "Host: x\r\nAuthorization: Bearer hadmc_u_bogus\r\n")
    data, took = _raw(server, bogus, b'{"')
    assert data.startswith(b"HTTP/1.1 413 "), data[:300]
    assert b"HADMC_MAX_JSON_BODY_KB" in data and took < TIMEOUT_S


def test_slow_clients_do_not_starve_a_healthy_one_and_are_closed(server: str) -> None:
    """300 connections: half send their headers a line at a time, half a 1000-byte body a
    byte at a time. A healthy client (health check and an authenticated list) is answered
    promptly throughout, and the server closes every slow connection within its timeout."""
    n, tick, phase_s = 300, 0.25, TIMEOUT_S + 2.5
    sel = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    slow_headers: set[socket.socket] = set()
    closed: dict[socket.socket, tuple[float, bytes]] = {}
    for i in range(n):
        sock = _open(server)
        if i % 2:
            sock.sendall(b"POST /v1/devices/register HTTP/1.1\r\nHost: x\r\n")
            slow_headers.add(sock)
        else:
            sock.sendall(b"POST /v1/devices/register HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        sock.setblocking(False)
        opened[sock] = time.monotonic()
        sel.register(sock, selectors.EVENT_READ)

    def close(sock: socket.socket, data: bytes = b"") -> None:
        closed[sock] = (time.monotonic() - opened[sock], data)
        sel.unregister(sock)
        sock.close()

    healthy: list[float] = []
    auth = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=server, timeout=2.0) as client:
        end, i = time.monotonic() + phase_s, 0
        while time.monotonic() < end and len(closed) < n:
            i += 1
            for sock in [s for s in opened if s not in closed]:
                try:
                    sock.send(f"X-Slow-{i}: y\r\n".encode() if sock in slow_headers else b" ")
                except OSError:
                    close(sock)
            for key, _ in sel.select(timeout=0):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data or data.startswith(b"HTTP/1.1 408"):
                    close(sock, data)  # type: ignore[arg-type]
            t0 = time.monotonic()
            assert client.get("/healthz").status_code == 200
            assert client.get("/v1/models", headers=auth).status_code == 200
            healthy.append(time.monotonic() - t0)
            time.sleep(max(0.0, tick - (time.monotonic() - t0)))
    for sock in opened:
        if sock not in closed:
            close(sock)
            closed[sock] = (float("inf"), b"")
    sel.close()

    assert len(healthy) >= 5 and max(healthy) < 1.5, healthy
    late = sorted(t for t, _ in closed.values() if t > TIMEOUT_S + 1.5)
    assert not late, f"{len(late)} slow connections were not closed in time: {late[:5]}"
    answered = [data for _, data in closed.values() if data]
    assert answered and all(d.startswith(b"HTTP/1.1 408") for d in answered)
    assert all(b"HADMC_BODY_TIMEOUT_SECONDS" in d for d in answered)
