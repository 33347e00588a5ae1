"""A strict fake of the server side of docs/protocol.md, and tiny ONNX models (no torch).

``FakeServer.handle`` answers exactly the device calls of the protocol; any other request is
recorded in ``unexpected`` (and gets a 599), and tests assert that list stays empty. It is
served through ``httpx.MockTransport`` (in-process) or a loopback HTTP server (for agent
subprocesses).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hadmc_core.delta import SignedManifest, build_manifest, diff, encode, sign
from hadmc_core.delta.keys import public_pem
from hadmc_core.hal import onnxwrite as ow

TOKEN, CREDENTIAL, DEVICE_ID = "enroll-tok", "dev-cred-1", 5


def mlp_onnx(seed: int = 0, scale: float = 0.0, hidden: int = 256, inputs: int = 64) -> bytes:
    """x[N, inputs] → MatMul → Add → Relu → MatMul → y[N, 4]. ``scale`` perturbs the
    first layer a little (a fine-tuned version of the same model)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((inputs, hidden)).astype(np.float32) * 0.1
    if scale:
        w1 += np.random.default_rng(seed + 100).standard_normal(w1.shape).astype(
            np.float32) * scale
    b1 = np.zeros(hidden, np.float32)
    w2 = rng.standard_normal((hidden, 4)).astype(np.float32) * 0.1
    nodes = [ow.node("MatMul", ["x", "w1"], ["h"]), ow.node("Add", ["h", "b1"], ["ha"]),
             ow.node("Relu", ["ha"], ["hr"]), ow.node("MatMul", ["hr", "w2"], ["y"])]
    return ow.model(nodes, [ow.value_info("x", ["N", inputs])], [ow.value_info("y", ["N", 4])],
                    [ow.tensor("w1", w1), ow.tensor("b1", b1), ow.tensor("w2", w2)])


def probe_for(onnx_bytes: bytes, wrong: bool = False) -> bytes:
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    width = sess.get_inputs()[0].shape[1]
    x = np.random.default_rng(7).standard_normal((2, width)).astype(np.float32)
    y = sess.run(None, {"x": x})[0]
    buf = io.BytesIO()
    np.savez(buf, inputs=x, outputs=y + (1.0 if wrong else 0.0), atol=np.float32(1e-4),
             rtol=np.float32(1e-3))
    return buf.getvalue()


@dataclass
class Version:
    vid: int
    number: int
    onnx: bytes
    manifest: bytes
    probe: bytes | None
    model: str = "model-1"


@dataclass
class FakeServer:
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    versions: dict[int, Version] = field(default_factory=dict)
    desired: dict[str, Any] = field(default_factory=lambda: {
        "version_id": None, "model_id": None, "number": None, "onnx_hash": None,
        "onnx_size": None, "rollout_id": None, "rollback_order": None})
    token_uses: int = 1
    requests: list[tuple[str, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    profiles: list[dict[str, Any]] = field(default_factory=list)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    #: Cut the next download of this path kind ("delta" / "model.onnx") after N bytes.
    drop_after: dict[str, int] = field(default_factory=dict)
    fail: set[str] = field(default_factory=set)  # route names answered with 503
    #: Answer per-model fields (``model``, ``models``) with 422, as a server from before
    #: several models per device does.
    one_model: bool = False
    deltas: dict[tuple[int, int], bytes] = field(default_factory=dict)
    #: Manifests devices sent to POST /v1/versions/{id}/delta.
    holder_manifests: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    # -- publishing ---------------------------------------------------------------------
    def publish(self, vid: int, number: int, onnx: bytes, *, probe: bytes | None = None,
                ttl: int = 3600, signer: Ed25519PrivateKey | None = None,
                now: int | None = None, model: str = "model-1") -> Version:
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "model.onnx"
            p.write_bytes(onnx)
            m = build_manifest(p, model=model, version=number, ttl_seconds=ttl, now=now)
        manifest = sign(m, signer or self.key).to_bytes()
        v = Version(vid, number, onnx, manifest, probe_for(onnx) if probe is None else probe,
                    model)
        self.versions[vid] = v
        return v

    def want(self, vid: int | None, rollout_id: int | None = 1,
             rollback_order: dict[str, Any] | None = None) -> None:
        v = self.versions.get(vid) if vid else None
        self.desired = {"version_id": vid, "model_id": 1 if v else None,
                        "number": v.number if v else None,
                        "onnx_hash": None, "onnx_size": len(v.onnx) if v else None,
                        "rollout_id": rollout_id if v else None,
                        "rollback_order": rollback_order}

    def want_models(self, wanted: list[tuple[int, dict[str, Any]]],
                    names: dict[str, str] | None = None) -> None:
        """The per-model desired state: ``[(version id, extra fields), ...]``, one per model
        (``hold``, ``rollout_id``, ``rollback_order``); the first is the primary."""
        entries = []
        for vid, extra in wanted:
            v = self.versions[vid]
            entries.append({"model": v.model, "model_id": int(v.model.split("-")[-1]),
                            "name": (names or {}).get(v.model), "version_id": vid,
                            "number": v.number, "onnx_hash": None, "onnx_size": len(v.onnx),
                            "rollout_id": 1, "rollback_order": None, "hold": False, **extra})
        top = entries[0] if entries else {}
        self.desired = {**{k: top.get(k) for k in ("version_id", "model_id", "number",
                                                   "onnx_hash", "onnx_size", "rollout_id",
                                                   "rollback_order")},
                        "hold": bool(top.get("hold")), "models": entries}

    def rollback_order(self, vid: int, *, device_id: int = DEVICE_ID, expires_in: int = 3600,
                       signer: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        v = self.versions[vid]
        order = {"kind": "rollback", "device_id": device_id, "model": v.model,
                 "version": v.number, "version_id": vid, "issued": int(time.time()),
                 "expires": int(time.time()) + expires_in}
        body = json.dumps(order, sort_keys=True, separators=(",", ":")).encode()
        return {"order": order, "signature": (signer or self.key).sign(body).hex()}

    @property
    def public_pem(self) -> str:
        return public_pem(self.key.public_key()).decode()

    # -- the protocol -------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes
               ) -> tuple[int, dict[str, str], bytes, str]:
        """Returns (status, headers, body, route kind)."""
        with self.lock:
            self.requests.append((method, path))
        route = self._route(method, path)
        if route is None:
            self.unexpected.append(f"{method} {path}")
            return 599, {}, b"unexpected request", ""
        name, args = route
        if name in self.fail:
            return 503, {"Content-Type": "application/problem+json"}, \
                json.dumps({"title": "Unavailable", "status": 503, "detail": "down"}).encode(), ""
        if name != "register" and headers.get("authorization") != f"Bearer {CREDENTIAL}":
            return _problem(401, "bad credential")
        return getattr(self, f"_{name}")(headers, body, *args)

    ROUTES = [("POST", r"/v1/devices/register", "register"),
              ("PUT", r"/v1/devices/(\d+)/profile", "profile"),
              ("POST", r"/v1/devices/(\d+)/latency", "latency"),
              ("POST", r"/v1/devices/(\d+)/heartbeat", "heartbeat"),
              ("POST", r"/v1/devices/(\d+)/updates", "updates"),
              ("GET", r"/v1/devices/(\d+)/desired", "desired"),
              ("GET", r"/v1/versions/(\d+)/manifest", "manifest"),
              ("GET", r"/v1/versions/(\d+)/model\.onnx", "model"),
              ("GET", r"/v1/versions/(\d+)/delta\?from=(\d+)", "delta"),
              ("POST", r"/v1/versions/(\d+)/delta", "holder"),
              ("GET", r"/v1/versions/(\d+)/probe", "probe")]

    def _route(self, method: str, path: str) -> tuple[str, tuple[int, ...]] | None:
        for m, pattern, name in self.ROUTES:
            hit = re.fullmatch(pattern, path)
            if m == method and hit:
                args = tuple(int(g) for g in hit.groups())
                if name not in ("register", "manifest", "model", "delta", "holder", "probe") and \
                        args[0] != DEVICE_ID:
                    return None
                return name, args
        return None

    def _register(self, _h: dict[str, str], body: bytes) -> tuple[int, dict, bytes, str]:
        doc = json.loads(body)
        if doc.get("enrollment_token") != TOKEN or self.token_uses <= 0:
            return _problem(401, "the enrollment token is unknown or used up")
        self.token_uses -= 1
        return _json(201, {"device_id": DEVICE_ID, "credential": CREDENTIAL,
                           "manifest_public_key": self.public_pem})

    def _profile(self, _h: dict, body: bytes, _d: int) -> tuple[int, dict, bytes, str]:
        self.profiles.append(json.loads(body))
        return _json(200, {"id": DEVICE_ID})

    def _latency(self, _h: dict, body: bytes, _d: int) -> tuple[int, dict, bytes, str]:
        self.latency.append(json.loads(body))
        return _json(200, {"id": DEVICE_ID})

    def _heartbeat(self, _h: dict, body: bytes, _d: int) -> tuple[int, dict, bytes, str]:
        if self.one_model and "models" in json.loads(body):
            return _problem(422, "body.models: Extra inputs are not permitted")
        self.heartbeats.append(json.loads(body))
        return _json(200, {"device_id": DEVICE_ID, "last_seen_at": "2026-01-01T00:00:00Z"})

    def _updates(self, _h: dict, body: bytes, _d: int) -> tuple[int, dict, bytes, str]:
        if self.one_model and "model" in json.loads(body):
            return _problem(422, "body.model: Extra inputs are not permitted")
        self.reports.append(json.loads(body))
        return _json(201, {"ok": True})

    def _desired(self, h: dict, _b: bytes, _d: int) -> tuple[int, dict, bytes, str]:
        data = json.dumps(self.desired, sort_keys=True).encode()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        if h.get("if-none-match") == etag:
            return 304, {"ETag": etag}, b"", ""
        return 200, {"ETag": etag, "Content-Type": "application/json"}, data, ""

    def _version(self, vid: int) -> Version | None:
        return self.versions.get(vid)

    def _manifest(self, _h: dict, _b: bytes, vid: int) -> tuple[int, dict, bytes, str]:
        v = self._version(vid)
        return _json(200, None, v.manifest) if v else _problem(404, "no such version")

    def _probe(self, _h: dict, _b: bytes, vid: int) -> tuple[int, dict, bytes, str]:
        v = self._version(vid)
        if v is None or v.probe is None:
            return _problem(404, "no probe")
        return 200, {"Content-Type": "application/octet-stream"}, v.probe, ""

    def _model(self, h: dict, _b: bytes, vid: int) -> tuple[int, dict, bytes, str]:
        v = self._version(vid)
        return _ranged(h, v.onnx, "model.onnx") if v else _problem(404, "no such version")

    def _delta(self, h: dict, _b: bytes, vid: int, base: int) -> tuple[int, dict, bytes, str]:
        v, b = self._version(vid), self._version(base)
        if v is None or b is None:
            return _problem(404, "no such version")
        if (base, vid) not in self.deltas:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "old").mkdir()
                (Path(tmp) / "new").mkdir()
                old, new = Path(tmp) / "old/model.onnx", Path(tmp) / "new/model.onnx"
                old.write_bytes(b.onnx)
                new.write_bytes(v.onnx)
                blob, _stats = diff(old, new, private_key=self.key, model=v.model,
                                    version=v.number)
            self.deltas[(base, vid)] = blob
        return _ranged(h, self.deltas[(base, vid)], "delta")

    def _holder(self, h: dict, body: bytes, vid: int) -> tuple[int, dict, bytes, str]:
        """A delta against the chunks the device's own manifest lists, as the service
        builds it (``cloud_service.services.deltas.delta_for_holder``)."""
        v = self._version(vid)
        if v is None:
            return _problem(404, "no such version")
        if h.get("content-type") != "application/json":
            return _problem(415, "send the manifest as JSON")
        held = SignedManifest.from_bytes(body).manifest
        target = SignedManifest.from_bytes(v.manifest)
        with tempfile.TemporaryDirectory() as tmp:
            new = Path(tmp) / "model.onnx"
            new.write_bytes(v.onnx)
            blob, _stats = encode(target, new, held)
        self.holder_manifests.append(held)
        return _ranged({}, blob, "delta")

    def count(self, kind: str, n: int) -> None:
        with self.lock:
            self.bytes_sent[kind] = self.bytes_sent.get(kind, 0) + n


def _json(status: int, doc: Any, raw: bytes | None = None) -> tuple[int, dict, bytes, str]:
    data = raw if raw is not None else json.dumps(doc).encode()
    return status, {"Content-Type": "application/json"}, data, ""


def _problem(status: int, detail: str) -> tuple[int, dict, bytes, str]:
    return status, {"Content-Type": "application/problem+json"}, json.dumps(
        {"title": "error", "status": status, "detail": detail}).encode(), ""


def _ranged(h: dict[str, str], data: bytes, kind: str) -> tuple[int, dict, bytes, str]:
    rng = h.get("range")
    if rng:
        m = re.fullmatch(r"bytes=(\d+)-", rng)
        start = int(m.group(1)) if m else 0
        if start >= len(data):
            return 416, {"Content-Range": f"bytes */{len(data)}"}, b"", kind
        return 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}",
                     "Content-Type": "application/octet-stream"}, data[start:], kind
    return 200, {"Content-Type": "application/octet-stream"}, data, kind


# -- transports -----------------------------------------------------------------------------
class _Dropping(httpx.SyncByteStream):
    """Yields ``limit`` bytes, then fails like a dropped connection."""

    def __init__(self, data: bytes, limit: int) -> None:
        self.data, self.limit = data, limit

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield self.data[:self.limit]
        raise httpx.ReadError("connection reset by peer")


def mock_transport(fake: FakeServer) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode()
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, hdrs, body, kind = fake.handle(request.method, path, headers, request.read())
        if kind and kind in fake.drop_after:
            limit = fake.drop_after.pop(kind)
            fake.count(kind, min(limit, len(body)))
            hdrs = {**hdrs, "Content-Length": str(len(body))}
            return httpx.Response(status, headers=hdrs, stream=_Dropping(body, limit))
        if kind:
            fake.count(kind, len(body))
        return httpx.Response(status, headers=hdrs, content=body)

    return httpx.MockTransport(handler)


class LoopbackServer:
    """The fake on 127.0.0.1 for agents in other processes."""

    def __init__(self, fake: FakeServer) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _do(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, hdrs, data, kind = fake.handle(self.command, self.path, headers, body)
                self.send_response(status)
                for k, v in hdrs.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                limit = fake.drop_after.pop(kind, None) if kind else None
                sent = data if limit is None else data[:limit]
                try:
                    for i in range(0, len(sent), 16384):
                        self.wfile.write(sent[i:i + 16384])
                        if kind:
                            fake.count(kind, len(sent[i:i + 16384]))
                        time.sleep(getattr(fake, "slow", 0.0))
                except OSError:
                    return
                if limit is not None:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = _do

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
