"""Dashboard sessions: a signed cookie that refers to an API token, and CSRF checks.

The cookie holds the SHA-256 of the API token the operator logged in with (the same digest
the database stores; never the token), a per-session CSRF token and the time it was issued,
signed with HMAC-SHA256 under a key derived from the manifest-signing key file (so every
API process of one server agrees, and nothing new has to be configured). Every request
checks the token again: a revoked or expired token ends its sessions at once.

The login form has a cookie of its own, holding only the form's CSRF token."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qsl, quote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import Depends, Request, Response
from sqlalchemy.orm import Session

from cloud_service.api.deps import SessionDep
from cloud_service.services.auth import Principal, resolve_user_digest

COOKIE = "hadmc_session"
#: A session lasts at most this long, even while its token stays valid.
SESSION_SECONDS = 12 * 3600
#: The login form's cookie (its CSRF token), separate so that showing the form never
#: ends a session; the form must be sent within this long.
LOGIN_COOKIE, LOGIN_PATH, LOGIN_SECONDS = "hadmc_login", "/ui/login", 3600
#: Form bodies larger than this are refused (they are a few fields).
MAX_FORM_BYTES = 64 * 1024


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class Refused(Exception):
    """A request of a logged-in operator refused with 403 (``viewer`` None: before login)."""

    def __init__(self, message: str, viewer: Viewer | None = None) -> None:
        super().__init__(message)
        self.viewer = viewer


class CsrfRefused(Refused):
    """A form posted without the CSRF token of the browser's session."""


class NotAllowed(Refused):
    """The operator's role does not allow this."""


class BadForm(Exception):
    """A body that is not a small URL-encoded form (400 or 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Viewer:
    """The operator behind a page request."""

    principal: Principal
    csrf: str

    @property
    def name(self) -> str:
        return self.principal.name or f"user {self.principal.id}"

    @property
    def role(self) -> str | None:
        return self.principal.role

    @property
    def can_operate(self) -> bool:
        """Operator or admin: may submit and cancel jobs and steer rollouts."""
        return self.principal.has_role("operator")


def session_key(signing_key: Ed25519PrivateKey) -> bytes:
    """The cookie-signing key: HKDF of the manifest-signing key (never the key itself)."""
    raw = signing_key.private_bytes_raw()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"hadmc dashboard session v1").derive(raw)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(key: bytes, payload: Mapping[str, object]) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def decode(key: bytes, value: str | None, now: float | None = None,
           max_age: int = SESSION_SECONDS) -> dict[str, object] | None:
    """The payload of a cookie signed with ``key`` and younger than ``max_age`` seconds."""
    if not value or value.count(".") != 1:
        return None
    body, mac = value.split(".")
    want = hmac.new(key, body.encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(_unb64(mac), want):
            return None
        payload = json.loads(_unb64(body))
    except (binascii.Error, ValueError):
        return None
    issued = payload.get("iat") if isinstance(payload, dict) else None
    if not isinstance(issued, int) or not isinstance(payload.get("c"), str):
        return None
    age = (now if now is not None else time.time()) - issued
    return payload if 0 <= age < max_age else None


def _key(request: Request) -> bytes:
    state = request.app.state
    if getattr(state, "ui_session_key", None) is None:
        state.ui_session_key = session_key(state.signing_key)
    return state.ui_session_key


def read_cookie(request: Request) -> dict[str, object] | None:
    return decode(_key(request), request.cookies.get(COOKIE))


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def _set(request: Request, response: Response, name: str, path: str, max_age: int,
         payload: dict[str, object]) -> None:
    response.set_cookie(name, encode(_key(request), payload), max_age=max_age, path=path,
                        secure=request.url.scheme == "https", httponly=True,
                        samesite="strict")


def start_session(request: Request, response: Response, token_hash: str) -> None:
    """A session of the API token with this digest, with a new CSRF token; the login
    form's cookie goes."""
    _set(request, response, COOKIE, "/ui", SESSION_SECONDS,
         {"t": token_hash, "c": new_csrf(), "iat": int(time.time())})
    clear_cookie(request, response, LOGIN_COOKIE, LOGIN_PATH)


def start_login(request: Request, response: Response, csrf: str) -> None:
    """The login form's own cookie (only a CSRF token; it never replaces a session)."""
    _set(request, response, LOGIN_COOKIE, LOGIN_PATH, LOGIN_SECONDS,
         {"c": csrf, "iat": int(time.time())})


def login_csrf(request: Request) -> str:
    """The CSRF token of the login form this browser was shown ("" when none or stale)."""
    payload = decode(_key(request), request.cookies.get(LOGIN_COOKIE), max_age=LOGIN_SECONDS)
    return str(payload["c"]) if payload else ""


def clear_cookie(request: Request, response: Response, name: str = COOKIE,
                 path: str = "/ui") -> None:
    response.delete_cookie(name, path=path, secure=request.url.scheme == "https",
                           httponly=True, samesite="strict")


def _here(request: Request) -> str:
    """The page to come back to after login (a form's target is no page: the overview)."""
    if request.method != "GET":
        return "/ui"
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def current_viewer(request: Request, session: Session) -> Viewer | None:
    """The operator whose session cookie this request carries, if its token is live."""
    payload = read_cookie(request)
    digest = payload.get("t") if payload else None
    if payload is None or not isinstance(digest, str):
        return None
    principal = resolve_user_digest(session=session, token_hash=digest)
    if principal is None:
        return None
    return Viewer(principal=principal, csrf=str(payload["c"]))


def get_viewer(request: Request, session: SessionDep) -> Viewer:
    """The logged-in operator, or ``LoginRequired`` (a redirect to the login form)."""
    viewer = current_viewer(request, session)
    if viewer is None:
        raise LoginRequired(_here(request))
    return viewer


ViewerDep = Annotated[Viewer, Depends(get_viewer)]


async def get_operator(viewer: ViewerDep) -> Viewer:
    if not viewer.can_operate:
        raise NotAllowed(f"this needs the operator role (or admin); you are logged in with "
                         f"a {viewer.role} token", viewer)
    return viewer


OperatorDep = Annotated[Viewer, Depends(get_operator)]


async def read_form(request: Request) -> dict[str, str]:
    """A small ``application/x-www-form-urlencoded`` body as a dict (last value wins)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise BadForm(415, "send the form as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadForm(413, f"a form body is limited to {MAX_FORM_BYTES} bytes")
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=200,
                              strict_parsing=False))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadForm(400, f"the form does not parse: {e}") from e


def check_csrf(expected: str, form: dict[str, str], viewer: Viewer | None = None) -> None:
    if not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
        raise CsrfRefused("the form's CSRF token is missing or stale; reload the page and "
                          "try again", viewer)


async def posted_form(request: Request, viewer: ViewerDep) -> dict[str, str]:
    """The form of a POST from a logged-in operator, its CSRF token checked."""
    form = await read_form(request)
    check_csrf(viewer.csrf, form, viewer)
    return form


async def operator_form(request: Request, viewer: OperatorDep) -> dict[str, str]:
    """As ``posted_form``, from an operator or admin."""
    return await posted_form(request, viewer)


#: A checked form from any logged-in user, and from an operator or admin.
FormDep = Annotated[dict[str, str], Depends(posted_form)]
OperatorFormDep = Annotated[dict[str, str], Depends(operator_form)]


def login_url(next_path: str) -> str:
    return "/ui/login?next=" + quote(next_path, safe="/")


def safe_next(value: str | None) -> str:
    """Where to go after login: a dashboard path only (never another site)."""
    if value and value.startswith("/ui") and not value.startswith("/ui/login") \
            and "//" not in value and "\\" not in value:
        return value
    return "/ui"
