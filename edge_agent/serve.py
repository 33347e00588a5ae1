"""Loopback inference endpoint for applications on the device (127.0.0.1 only).

- ``GET /v1/models``: every model: its name (``model-4``), the server's name for it, the
  active version, the stable file path, and which one is the primary.
- ``GET /v1/models/{name}``: a model's active version, stable path, inputs and outputs.
  ``{name}`` is the model's name on the device (``model-4``) or the server's name of the
  model (``classifier``) when one model has it.
- ``POST /v1/models/{name}/infer`` with ``Content-Type: application/json``:
  ``{"inputs": {"<input>": nested lists}}`` (or ``{"input": ...}`` for the only input)
  → ``{"model": "model-4", "version_id": 7, "outputs": {"<output>": nested lists}}``.
- ``POST /v1/models/{name}/infer`` with ``Content-Type: application/octet-stream``: the
  raw little-endian tensor, ``X-Shape: 1,3,32,32`` and optional ``X-Dtype`` (default
  float32) → the first output's raw bytes with ``X-Shape``, ``X-Dtype``,
  ``X-Version-Id`` and ``X-Model``.
- ``GET /v1/model`` and ``POST /v1/infer``: the same for the primary model (the first
  installed; the only one of an agent that ran one model).

Each model's session follows its ``current``: a request after a switch runs the new
version, opened with the runtime recorded for it (``edge_agent.smoke.open_session``: ONNX
Runtime or OpenVINO, whichever the version was built for).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import numpy as np

from edge_agent import detect
from edge_agent.errors import SmokeTestError
from edge_agent.smoke import open_session, runtime_of
from edge_agent.store import MODEL_FILE, AgentState, Store
from hadmc_core.backends import Session

log = logging.getLogger(__name__)
MAX_BODY = 64 << 20
MODEL_PATH = re.compile(r"/v1/models/([^/]+)(/infer)?")
DTYPES = {"float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool"}


class BadRequest(Exception):
    status = 400


class UnknownModel(BadRequest):
    status = 404


class NoModel(BadRequest):
    status = 503


class ModelRuntime:
    """A session per model (``hadmc_core.backends.Session`` of the version's runtime), of
    its active version, reloaded when the model's ``current`` moves. ``state`` (the
    agent's) gives the primary model and the models' names from the server; without it
    the primary is what ``DIR/current`` names."""

    def __init__(self, store: Store, threads: int = 0, state: AgentState | None = None
                 ) -> None:
        self.store, self.threads, self.state = store, threads, state
        self.lock = threading.Lock()
        #: Per model: (version id, its session, the runtime's name, a lock). Requests to one
        #: model run one at a time: an OpenVINO session has one infer request.
        self.sessions: dict[str, tuple[int, Session, str, threading.Lock]] = {}
        #: Per version: [requests run, requests that failed in the runtime] (health checks).
        self.counts: dict[int, list[int]] = {}

    def served(self, vid: int) -> tuple[int, int]:
        """(requests, failures) served by version ``vid`` since the agent started."""
        with self.lock:
            n, failed = self.counts.get(vid, (0, 0))
        return n, failed

    def _names(self) -> dict[str, str | None]:
        """Model key -> the model's name on the server (None: not known)."""
        known = dict(self.state.models.items()) if self.state is not None else {}
        return {k: (known[k].name if k in known else None) for k in self.store.model_keys()}

    def resolve(self, name: str | None) -> str:
        """The model a request means: None = the primary (or the only) model; else a model
        key (``model-4``), or the server's name of a model when one model has it."""
        names = self._names()
        if name is None:
            primary = (self.state.primary if self.state is not None else None) \
                or self.store.primary_key()
            if primary is None and len(names) == 1:
                primary = next(iter(names))
            if primary is None:
                raise NoModel("no model version is active yet")
            return primary
        if name in names:
            return name
        named = [k for k, n in names.items() if n == name]
        if len(named) == 1:
            return named[0]
        raise UnknownModel(f"no model {name!r} on this device (models: "
                           f"{', '.join(sorted(names)) or 'none yet'})")

    def session(self, name: str | None = None) -> tuple[str, int, Session]:
        key, (vid, sess, _runtime, _lock) = self._open(name)
        return key, vid, sess

    def _open(self, name: str | None) -> tuple[str, tuple[int, Session, str, threading.Lock]]:
        key = self.resolve(name)
        vid = self.store.model(key).current_vid()
        if vid is None:
            raise NoModel(f"no version of {key} is active yet")
        with self.lock:
            have = self.sessions.get(key)
            if have is None or have[0] != vid:
                # open through versions/<vid> (never modified) rather than current
                vdir = self.store.model(key).version_dir(vid)
                try:
                    runtime = runtime_of(vdir)
                    sess = open_session(vdir / MODEL_FILE, self.threads, runtime)
                except SmokeTestError as e:
                    raise NoModel(f"{key} version {vid} cannot be opened: {e}") from e
                have = self.sessions[key] = (vid, sess, runtime.name, threading.Lock())
                log.info("serving %s version %d with %s", key, vid, runtime.name,
                         extra={"version_id": vid, "model": key})
            return key, have

    def describe(self, name: str | None = None) -> dict[str, Any]:
        key, (vid, sess, runtime, _lock) = self._open(name)
        inputs = [{"name": n, "shape": list(shape), "type": str(dtype)} for n, shape, dtype
                  in zip(sess.input_names, sess.input_shapes, sess.input_dtypes, strict=True)]
        path = self.store.current if name is None else self.store.model(key).current
        info = detect.model_info(self.store.model(key).version_dir(vid) / MODEL_FILE)
        return {"model": key, "name": self._names().get(key), "version_id": vid,
                "path": str(path / MODEL_FILE), "runtime": runtime, "task": info.task,
                **({"classes": info.classes} if info.is_detector else {}),
                "inputs": inputs, "outputs": [{"name": n} for n in sess.output_names]}

    def listing(self) -> dict[str, Any]:
        primary = None
        with contextlib.suppress(BadRequest):
            primary = self.resolve(None)
        out = []
        for key, display in self._names().items():
            mstore = self.store.model(key)
            out.append({"model": key, "name": display, "version_id": mstore.current_vid(),
                        "path": str(mstore.current / MODEL_FILE), "primary": key == primary})
        return {"models": out}

    def run(self, feeds: dict[str, np.ndarray], name: str | None = None
            ) -> tuple[str, int, dict[str, np.ndarray]]:
        key, (vid, sess, _runtime, lock) = self._open(name)
        names = sess.output_names
        try:
            with lock:
                outs = sess.run(feeds)
        except Exception as e:  # noqa: BLE001 - runtimes raise their own types
            self._count(vid, failed=True)
            raise BadRequest(f"inference failed: {str(e)[:300]}") from e
        self._count(vid, failed=False)
        return key, vid, dict(zip(names, (np.asarray(o) for o in outs), strict=True))

    def _count(self, vid: int, failed: bool) -> None:
        with self.lock:
            c = self.counts.setdefault(vid, [0, 0])
            c[0] += 1
            c[1] += int(failed)


def _json_feeds(body: bytes, sess: Session) -> dict[str, np.ndarray]:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise BadRequest(f"body is not JSON: {e}") from e
    if isinstance(doc, dict) and "input" in doc and len(sess.input_names) == 1:
        doc = {"inputs": {sess.input_names[0]: doc["input"]}}
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise BadRequest('expected {"inputs": {"<name>": [...]}} or {"input": [...]}')
    feeds = {}
    for name, dtype in zip(sess.input_names, sess.input_dtypes, strict=True):
        if name not in doc["inputs"]:
            raise BadRequest(f"missing input {name!r}")
        try:
            feeds[name] = np.asarray(doc["inputs"][name], dtype=dtype)
        except (ValueError, TypeError) as e:
            raise BadRequest(f"input {name!r}: {e}") from e
    return feeds


def _raw_feeds(body: bytes, headers: Any, sess: Session) -> dict[str, np.ndarray]:
    dtype = headers.get("X-Dtype", "float32")
    if dtype not in DTYPES:
        raise BadRequest(f"X-Dtype must be one of {', '.join(sorted(DTYPES))}")
    try:
        shape = tuple(int(x) for x in headers.get("X-Shape", "").split(","))
    except ValueError as e:
        raise BadRequest("X-Shape must be comma-separated integers, e.g. 1,3,32,32") from e
    name = headers.get("X-Input") or (sess.input_names[0] if len(sess.input_names) == 1
                                      else "")
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

    def _route(self) -> tuple[str | None, str] | None:
        """(model name or None for the primary, "describe" | "infer" | "list")."""
        path = self.path.split("?", 1)[0]
        if path in ("/v1/model", "/healthz"):
            return None, "describe"
        if path == "/v1/infer":
            return None, "infer"
        if path == "/v1/models":
            return None, "list"
        m = MODEL_PATH.fullmatch(path)
        if m is None:
            return None
        return unquote(m.group(1)), "infer" if m.group(2) else "describe"

    def _not_found(self) -> None:
        self._json(404, {"title": "Not Found", "status": 404, "detail": self.path})

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        route = self._route()
        if route is None or route[1] == "infer":
            self._not_found()
        elif route[1] == "list":
            self._guard(lambda: self._json(200, self.runtime.listing()))
        else:
            self._guard(lambda: self._json(200, self.runtime.describe(route[0])))

    def do_POST(self) -> None:  # noqa: N802
        route = self._route()
        if route is None or route[1] != "infer":
            self._not_found()
            return
        self._guard(lambda: self._infer(route[0]))

    def _infer(self, name: str | None) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            raise BadRequest(f"Content-Length must be 1..{MAX_BODY}")
        body = self.rfile.read(length)
        _key, _vid, sess = self.runtime.session(name)
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype == "application/octet-stream":
            key, vid, outs = self.runtime.run(
                _raw_feeds(body, self.headers, sess), name)
            first = np.ascontiguousarray(next(iter(outs.values())))
            self._send(200, first.astype(first.dtype.newbyteorder("<")).tobytes(), ctype,
                       {"X-Shape": ",".join(map(str, first.shape)),
                        "X-Dtype": str(first.dtype), "X-Version-Id": str(vid),
                        "X-Model": key})
            return
        feeds = _json_feeds(body, sess)
        key, vid, outs = self.runtime.run(feeds, name)
        try:  # a detector also answers its detections (edge_agent.detect)
            extra = detect.serve_fields(self.runtime.store.model(key).version_dir(vid)
                                        / MODEL_FILE, feeds, outs)
        except ValueError as e:
            raise BadRequest(str(e)) from e
        self._json(200, {"model": key, "version_id": vid,
                         "outputs": {k: v.tolist() for k, v in outs.items()}, **extra})


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
        log.info("inference endpoint on http://127.0.0.1:%d/v1/models/{name}/infer",
                 self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
