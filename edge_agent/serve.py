"""Loopback inference endpoint for applications on the device (127.0.0.1 only).

- ``GET /v1/model``: active version id, stable model path, inputs and outputs.
- ``POST /v1/infer`` with ``Content-Type: application/json``:
  ``{"inputs": {"<name>": nested lists}}`` (or ``{"input": ...}`` for the only input)
  → ``{"version_id": 7, "outputs": {"<name>": nested lists}}``.
- ``POST /v1/infer`` with ``Content-Type: application/octet-stream``: the raw little-endian
  tensor, ``X-Shape: 1,3,32,32`` and optional ``X-Dtype`` (default float32) → the first
  output's raw bytes with ``X-Shape``, ``X-Dtype`` and ``X-Version-Id``.

The session follows ``current``: a request after a switch runs the new version.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from edge_agent.smoke import open_session
from edge_agent.store import MODEL_FILE, Store

log = logging.getLogger(__name__)
MAX_BODY = 64 << 20
ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
             "tensor(float16)": "float16"}
DTYPES = {"float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool"}


class BadRequest(Exception):
    status = 400


class NoModel(BadRequest):
    status = 503


class ModelRuntime:
    """The ONNX Runtime session of the active version, reloaded when ``current`` moves."""

    def __init__(self, store: Store, threads: int = 0) -> None:
        self.store, self.threads = store, threads
        self.lock = threading.Lock()
        self.vid: int | None = None
        self.sess: Any = None
        #: Per version: [requests run, requests that failed in the runtime] (health checks).
        self.counts: dict[int, list[int]] = {}

    def served(self, vid: int) -> tuple[int, int]:
        """(requests, failures) served by version ``vid`` since the agent started."""
        with self.lock:
            n, failed = self.counts.get(vid, (0, 0))
        return n, failed

    def session(self) -> tuple[int, Any]:
        vid = self.store.current_vid()
        if vid is None:
            raise NoModel("no model version is active yet")
        with self.lock:
            if vid != self.vid:
                # open through versions/<vid> (never modified) rather than current
                self.sess = open_session(self.store.version_dir(vid) / MODEL_FILE, self.threads)
                self.vid = vid
                log.info("serving version %d", vid, extra={"version_id": vid})
            return vid, self.sess

    def describe(self) -> dict[str, Any]:
        vid, sess = self.session()

        def io(args: list[Any]) -> list[dict[str, Any]]:
            return [{"name": a.name, "shape": a.shape, "type": a.type} for a in args]

        return {"version_id": vid, "path": str(self.store.current / MODEL_FILE),
                "inputs": io(sess.get_inputs()), "outputs": io(sess.get_outputs())}

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]]:
        vid, sess = self.session()
        names = [o.name for o in sess.get_outputs()]
        try:
            outs = sess.run(None, feeds)
        except Exception as e:  # noqa: BLE001 - ORT raises its own types
            self._count(vid, failed=True)
            raise BadRequest(f"inference failed: {str(e)[:300]}") from e
        self._count(vid, failed=False)
        return vid, dict(zip(names, (np.asarray(o) for o in outs), strict=True))

    def _count(self, vid: int, failed: bool) -> None:
        with self.lock:
            c = self.counts.setdefault(vid, [0, 0])
            c[0] += 1
            c[1] += int(failed)


def _json_feeds(body: bytes, sess_inputs: list[Any]) -> dict[str, np.ndarray]:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise BadRequest(f"body is not JSON: {e}") from e
    if isinstance(doc, dict) and "input" in doc and len(sess_inputs) == 1:
        doc = {"inputs": {sess_inputs[0].name: doc["input"]}}
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise BadRequest('expected {"inputs": {"<name>": [...]}} or {"input": [...]}')
    feeds = {}
    for a in sess_inputs:
        if a.name not in doc["inputs"]:
            raise BadRequest(f"missing input {a.name!r}")
        dtype = ORT_TYPES.get(a.type, a.type[7:-1])
        try:
            feeds[a.name] = np.asarray(doc["inputs"][a.name], dtype=dtype)
        except (ValueError, TypeError) as e:
            raise BadRequest(f"input {a.name!r}: {e}") from e
    return feeds


def _raw_feeds(body: bytes, headers: Any, sess_inputs: list[Any]) -> dict[str, np.ndarray]:
    dtype = headers.get("X-Dtype", "float32")
    if dtype not in DTYPES:
        raise BadRequest(f"X-Dtype must be one of {', '.join(sorted(DTYPES))}")
    try:
        shape = tuple(int(x) for x in headers.get("X-Shape", "").split(","))
    except ValueError as e:
        raise BadRequest("X-Shape must be comma-separated integers, e.g. 1,3,32,32") from e
    name = headers.get("X-Input") or (sess_inputs[0].name if len(sess_inputs) == 1 else "")
    if not name:
        raise BadRequest("the model has several inputs: name one with X-Input")
    dt = np.dtype(dtype).newbyteorder("<")
    if int(np.prod(shape)) * dt.itemsize != len(body):
        raise BadRequest(f"body is {len(body)} bytes; shape {shape} of {dtype} needs "
                         f"{int(np.prod(shape)) * dt.itemsize}")
    return {name: np.frombuffer(body, dt).reshape(shape)}


class _Handler(BaseHTTPRequestHandler):
    runtime: ModelRuntime
    server_version = "hadmc-agent"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        log.debug("inference endpoint: " + format, *args)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
              ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except BadRequest as e:
            self._send(e.status, json.dumps({"title": "Bad Request", "status": e.status,
                                             "detail": str(e)}).encode(),
                       "application/problem+json")

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path in ("/v1/model", "/healthz"):
            self._guard(lambda: self._json(200, self.runtime.describe()))
        else:
            self._json(404, {"title": "Not Found", "status": 404, "detail": self.path})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/v1/infer":
            self._json(404, {"title": "Not Found", "status": 404, "detail": self.path})
            return
        self._guard(self._infer)

    def _infer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            raise BadRequest(f"Content-Length must be 1..{MAX_BODY}")
        body = self.rfile.read(length)
        _vid, sess = self.runtime.session()
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype == "application/octet-stream":
            vid, outs = self.runtime.run(_raw_feeds(body, self.headers, sess.get_inputs()))
            first = np.ascontiguousarray(next(iter(outs.values())))
            self._send(200, first.astype(first.dtype.newbyteorder("<")).tobytes(), ctype,
                       {"X-Shape": ",".join(map(str, first.shape)),
                        "X-Dtype": str(first.dtype), "X-Version-Id": str(vid)})
            return
        vid, outs = self.runtime.run(_json_feeds(body, sess.get_inputs()))
        self._json(200, {"version_id": vid, "outputs": {k: v.tolist() for k, v in outs.items()}})


class InferenceServer:
    """``ThreadingHTTPServer`` on 127.0.0.1 in a daemon thread. Port 0 picks a free one."""

    def __init__(self, runtime: ModelRuntime, port: int) -> None:
        handler = type("Handler", (_Handler,), {"runtime": runtime})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="inference",
                                       daemon=True)

    def start(self) -> InferenceServer:
        self.thread.start()
        log.info("inference endpoint on http://127.0.0.1:%d/v1/infer", self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
