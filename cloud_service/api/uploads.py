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

RAW_BODY: dict[str, Any] = {"requestBody": {
    "required": True, "description": "The file itself, streamed as the request body.",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
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
