"""Templates, display filters and the headers every dashboard page carries."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from cloud_service.db import utcnow
from cloud_service.ui.session import Viewer

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")

#: Pages load scripts and styles from /ui/static only; nothing inline, no other origin.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "never"


def ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "never"
    seconds = max(0.0, ((now or utcnow()) - value).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def size(value: float | None) -> str:
    if value is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def num(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` significant digits; an en dash when unknown."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        return f"{value:.{max(digits - 1, 0)}e}"
    places = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:.{places}f}"


def count(value: int | None) -> str:
    """An integer with thousands separators (1,507,776)."""
    return f"{value:,}" if isinstance(value, int) else "–"


templates.env.filters.update(when=when, ago=ago, size=size, num=num, count=count)


def render(request: Request, template: str, viewer: Viewer | None, status: int = 200,
           **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(
        request, template, {"viewer": viewer, **context}, status_code=status)
    response.headers.update(HEADERS)
    return response


def error_page(request: Request, viewer: Viewer | None, status: int, message: str
               ) -> HTMLResponse:
    return render(request, "error.html", viewer, status=status, status_code=status,
                  message=message, title=f"Error {status}")
