"""File downloads with Range (206) and ETag, counting what a device is sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Message, Receive, Scope, Send

from cloud_service.api.problems import problems
from cloud_service.errors import MalformedRangeError, RangeNotSatisfiableError
from cloud_service.services.auth import Principal
from cloud_service.services.devices import record_download
from cloud_service.storage import ArtifactStore

_ETAG = {"ETag": {"description": "The file's BLAKE3 hash, quoted.",
                  "schema": {"type": "string"},
                  "example": '"a6aeb1a4f5371758043c41e5a587b99a3a53798bbfa2f7b689233aca4fb52374"'}}


# ``openapi_extra`` of a download: the optional Range request header.
RANGE: dict[str, Any] = {"parameters": [{
    "name": "Range", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "One or more byte ranges (`bytes=START-END`, `bytes=START-`, `bytes=-N`) "
                   "to resume a download.", "example": "bytes=65536-"}]}


def octet(what: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a file download with HTTP Range support."""
    def body(part: str) -> dict[str, Any]:
        return {"schema": {"type": "string", "format": "binary"},
                "example": f"({part} of {what})"}

    errors = problems(400, 416)
    errors[416]["headers"] = {"Content-Range": {
        "description": "`bytes */SIZE`: the file's size.", "schema": {"type": "string"},
        "example": "bytes */11240512"}}
    return {200: {"description": f"The whole file ({what}).",
                  "content": {"application/octet-stream": body("the bytes")},
                  "headers": _ETAG},
            206: {"description": "Partial content: the requested `Range` (several ranges "
                                 "come as `multipart/byteranges`).",
                  "content": {"application/octet-stream": body("a byte range"),
                              "multipart/byteranges": body("several byte ranges")},
                  "headers": {**_ETAG, "Content-Range": {
                      "description": "The range sent and the file's size.",
                      "schema": {"type": "string"}, "example": "bytes 0-65535/11240512"}}},
            **errors}


class CountedFileResponse(FileResponse):
    """A FileResponse that reports the body bytes it actually sent (a range's length for
    206; what got out before a client dropped) to ``on_sent`` once it is done, and whose
    Range errors are problems (Starlette's own are plain text)."""

    def __init__(self, *args: Any, on_sent: Callable[[int], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_sent = on_sent

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        # Raised before anything is sent, so the app's exception handlers answer them.
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader as e:
            raise MalformedRangeError(http_range, e.content) from e
        except RangeNotSatisfiable as e:
            raise RangeNotSatisfiableError(e.max_size) from e

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.on_sent is None:
            return await super().__call__(scope, receive, send)
        sent = 0

        async def counting(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == "http.response.pathsend" and self.stat_result:
                sent += self.stat_result.st_size
            await send(message)

        try:
            await super().__call__(scope, receive, counting)
        finally:
            if sent and self.on_sent is not None:
                await run_in_threadpool(self.on_sent, sent)


def serve_artifact(request: Request, store: ArtifactStore, digest: str, filename: str,
                   who: Principal, version_id: int) -> CountedFileResponse:
    """The stored file ``digest``; bytes sent to a device count for it and its rollout,
    and in ``hadmc_download_bytes_total`` by kind (a ``.delta`` file or the full model)."""
    on_sent = None
    if who.kind == "device":
        maker = request.app.state.sessionmaker
        sent = request.app.state.metrics.download_bytes.labels(
            "delta" if filename.endswith(".delta") else "full")

        def on_sent(nbytes: int) -> None:
            sent.inc(nbytes)
            with maker() as session:
                record_download(session=session, device_id=who.id, version_id=version_id,
                                nbytes=nbytes)
                session.commit()

    return CountedFileResponse(store.path(digest), media_type="application/octet-stream",
                               filename=filename, headers={"ETag": f'"{digest}"'},
                               on_sent=on_sent)
