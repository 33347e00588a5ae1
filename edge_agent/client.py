"""HTTP client for the device protocol (docs/protocol.md): timeouts, typed errors, backoff
with jitter, and downloads that resume with ``Range`` and never exceed a bound."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from edge_agent.errors import DownloadError, NetworkError, ServerError

log = logging.getLogger(__name__)
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class Backoff:
    """Exponential backoff with full jitter: the n-th delay is uniform in
    ``[0, min(cap, base * 2**n)]`` (so a fleet that lost its server does not return at once)."""

    def __init__(self, base: float = 1.0, cap: float = 300.0,
                 rng: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self.rng = base, cap, rng
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(self.failures, 30))
        self.failures += 1
        return ceiling * self.rng()

    def reset(self) -> None:
        self.failures = 0


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200] or resp.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)[:300]
    return str(body)[:300]


#: Idle pooled connections are dropped after this long: below the server's keep-alive
#: timeout (uvicorn: 5 s), so the agent never sends on a connection that the server is
#: closing at that moment (that race surfaces as ReadError / RemoteProtocolError).
KEEPALIVE_EXPIRY_SECONDS = 2.0


def default_transport() -> httpx.HTTPTransport:
    return httpx.HTTPTransport(limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS))


class ServerClient:
    """One device's connection to the server. ``credential`` is sent as a bearer token."""

    def __init__(self, base_url: str, *, credential: str | None = None,
                 connect_timeout: float = 10.0, io_timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        self.http = httpx.Client(base_url=base_url,
                                 timeout=httpx.Timeout(io_timeout, connect=connect_timeout),
                                 transport=transport or default_transport(),
                                 follow_redirects=False,
                                 headers={"User-Agent": "hadmc-agent"})
        self.credential = credential
        self.sleep = sleep

    def close(self) -> None:
        self.http.close()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.credential}"} if self.credential else {}
        return {**h, **(extra or {})}

    @staticmethod
    def check(resp: httpx.Response, what: str) -> httpx.Response:
        if resp.status_code < 400 or resp.status_code == 416:
            return resp
        msg = f"{what}: HTTP {resp.status_code}: {_detail(resp)}"
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise NetworkError(msg)
        raise ServerError(msg, resp.status_code)

    def request(self, method: str, path: str, what: str, **kw: Any) -> httpx.Response:
        """Send and read one request; NetworkError for transport failures and 5xx."""
        headers = self._headers(kw.pop("headers", None))
        try:
            resp = self.http.request(method, path, headers=headers, **kw)
        except httpx.TransportError as e:
            raise NetworkError(f"{what}: {type(e).__name__}: {e or 'no answer'}") from e
        return self.check(resp, what)

    def json(self, method: str, path: str, what: str, **kw: Any) -> Any:
        resp = self.request(method, path, what, **kw)
        try:
            return resp.json()
        except ValueError as e:
            raise NetworkError(f"{what}: the server's answer is not JSON") from e

    # -- device calls ---------------------------------------------------------------------
    def register(self, token: str, name: str, profile: dict[str, Any] | None) -> Any:
        body: dict[str, Any] = {"enrollment_token": token, "name": name}
        if profile:
            body["profile"] = profile
        return self.json("POST", "/v1/devices/register", "enrollment", json=body)

    def desired(self, device_id: int, etag: str | None) -> tuple[dict[str, Any] | None, str]:
        """The desired version, or None when unchanged (304 to our ``If-None-Match``)."""
        headers = {"If-None-Match": etag} if etag else {}
        resp = self.request("GET", f"/v1/devices/{device_id}/desired", "desired version",
                            headers=headers)
        if resp.status_code == 304:
            return None, etag or ""
        try:
            body = resp.json()
        except ValueError as e:
            raise NetworkError("desired version: the server's answer is not JSON") from e
        if not isinstance(body, dict):
            raise NetworkError("desired version: expected a JSON object")
        return body, resp.headers.get("ETag", "")

    def get_bytes(self, path: str, what: str, max_bytes: int) -> bytes:
        """A small body (manifest, probe), read with a cap."""
        headers = self._headers()
        out = bytearray()
        try:
            with self.http.stream("GET", path, headers=headers) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self.check(resp, what)
                for part in resp.iter_bytes():
                    out += part
                    if len(out) > max_bytes:
                        raise DownloadError(f"{what} is larger than its {max_bytes}-byte cap")
        except httpx.TransportError as e:
            raise NetworkError(f"{what}: {type(e).__name__}: {e or 'no answer'}") from e
        return bytes(out)

    # -- resumable downloads --------------------------------------------------------------
    def download(self, path: str, dest: Path, *, what: str, max_bytes: int,
                 attempts: int = 5, backoff: Backoff | None = None,
                 json_body: bytes | None = None) -> int:
        """Fetch ``path`` into ``dest``, resuming from what ``dest`` holds with ``Range``
        after a dropped connection. Refuses a body larger than ``max_bytes`` (from the
        signed manifest) before and while reading. Returns the bytes received.
        ``json_body``: POST it (``application/json``) instead of a GET; the server answers
        a POST whole, so a dropped download starts over."""
        backoff = backoff or Backoff()
        received = [0]
        for attempt in range(1, attempts + 1):
            try:
                self._fetch_range(path, dest, what, max_bytes, received, json_body)
                return received[0]
            except NetworkError as e:
                if attempt == attempts:
                    raise DownloadError(f"{what}: gave up after {attempts} attempts: {e}") from e
                delay = backoff.next_delay()
                log.info("%s: %s; resuming from byte %d in %.1f s", what, e,
                         dest.stat().st_size if dest.exists() else 0, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _fetch_range(self, path: str, dest: Path, what: str, max_bytes: int,
                     received: list[int], json_body: bytes | None = None) -> None:
        """One request from where ``dest`` ends; adds what arrives to ``received[0]``."""
        have = dest.stat().st_size if dest.exists() else 0
        headers = self._headers({"Range": f"bytes={have}-"} if have else {})
        method = "GET" if json_body is None else "POST"
        if json_body is not None:
            headers["Content-Type"] = "application/json"
        got = 0
        try:
            with self.http.stream(method, path, headers=headers, content=json_body) as resp:
                if resp.status_code >= 400 and resp.status_code != 416:
                    resp.read()
                self.check(resp, what)
                try:
                    start, total = self._extent(resp, have, what)
                except NetworkError:
                    dest.unlink(missing_ok=True)  # a stale partial file: start over
                    raise
                if total is not None and total > max_bytes:
                    raise DownloadError(f"{what} is {total} bytes, more than the {max_bytes} "
                                        "the signed manifest allows; refusing it")
                if resp.status_code == 416 or start == total:
                    return
                with dest.open("r+b" if start else "wb") as f:
                    f.seek(start)
                    f.truncate()
                    for part in resp.iter_bytes():
                        if f.tell() + len(part) > max_bytes:
                            raise DownloadError(f"{what} exceeds its {max_bytes}-byte bound; "
                                                "refusing it")
                        f.write(part)
                        got += len(part)
                        received[0] += len(part)
                    size = f.tell()
                if total is not None and size != total:
                    raise NetworkError(f"{what}: connection closed at byte {size} of {total}")
        except httpx.TransportError as e:
            raise NetworkError(f"{what}: {type(e).__name__} after {got} bytes") from e

    @staticmethod
    def _extent(resp: httpx.Response, have: int, what: str) -> tuple[int, int | None]:
        """Where the body starts in the file and the file's total size (None: unknown)."""
        if resp.status_code == 416:
            m = re.fullmatch(r"bytes \*/(\d+)", resp.headers.get("Content-Range", ""))
            if m and int(m.group(1)) == have:
                return have, have  # we already have all of it
            raise NetworkError(f"{what}: range from {have} not satisfiable; restarting")
        if resp.status_code == 206:
            m = CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise DownloadError(f"{what}: the server answered another range than asked")
            return have, None if m.group(3) == "*" else int(m.group(3))
        length = resp.headers.get("Content-Length")
        return 0, int(length) if length and length.isdigit() else None
