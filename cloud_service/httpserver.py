"""The HTTP server of ``hadmc serve``: uvicorn with bounded connections.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but a client that
sends a request's headers a byte at a time (or sends a byte after an answer) is never timed
out, so a few hundred such connections would be held forever. The protocols here close a
connection that has no request in progress for ``HADMC_HEADER_TIMEOUT_SECONDS``: from when it
opens, or from the end of the previous answer, until a request's headers are complete.
Request bodies are timed by the request guard (``cloud_service/api/guard.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from cloud_service.settings import Settings, get_settings


class _HeaderDeadline:
    """Mixin for a uvicorn HTTP protocol (``loop``, ``transport``, ``cycle``)."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = get_settings().header_timeout_seconds
        self._header_timer: asyncio.TimerHandle | None = None

    def _arm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self._header_timeout, self._header_deadline)

    def _header_deadline(self) -> None:
        self._header_timer = None
        idle = self.cycle is None or self.cycle.response_complete
        if idle and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)  # type: ignore[misc]

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._arm_header_deadline()


class BoundedH11Protocol(_HeaderDeadline, H11Protocol):
    pass


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed: uvicorn uses h11
    HttpToolsProtocol = None  # type: ignore[assignment,misc]
    BoundedHttpToolsProtocol: type | None = None
else:
    class BoundedHttpToolsProtocol(_HeaderDeadline, HttpToolsProtocol):  # type: ignore[no-redef]
        pass


def protocol_class() -> type:
    """The bounded protocol over the parser uvicorn would pick (httptools when installed)."""
    return BoundedHttpToolsProtocol or BoundedH11Protocol


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Connection limits for ``uvicorn.run``."""
    return {"http": protocol_class(), "timeout_keep_alive": settings.keep_alive_seconds,
            "limit_concurrency": settings.max_connections}
