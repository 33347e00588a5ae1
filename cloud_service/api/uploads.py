"""Raw-body streaming uploads (``application/octet-stream``) into the artifact store."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from cloud_service.errors import (
    InvalidInputError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from cloud_service.settings import Settings
from cloud_service.storage import ArtifactStore


def raw_body(what: str) -> dict[str, Any]:
    """``openapi_extra`` for an upload streamed as the raw body."""
    return {"requestBody": {
        "required": True, "description": f"The file itself ({what}), streamed as the body.",
        "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "example": f"({what}: the file's bytes)"}},
    }}


async def receive(request: Request, settings: Settings, store: ArtifactStore) -> tuple[str, int]:
    """Stream the body into the store; returns (BLAKE3 hex, size)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/octet-stream":
        raise UnsupportedMediaTypeError(
            f"send the file as the raw body with Content-Type: application/octet-stream "
            f"(got {ctype or 'none'})")
    limit = settings.max_upload_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"upload of {int(length)} bytes is over the limit of "
                                   f"{limit} bytes (HADMC_MAX_UPLOAD_MB)")
    digest, size = await store.ingest_stream(request.stream(), limit)
    if size == 0:
        raise InvalidInputError("the upload is empty")
    return digest, size
