"""/ui/login and /ui/logout: a session from an API token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cloud_service import security
from cloud_service.api.deps import SessionDep
from cloud_service.services import auth as auth_svc
from cloud_service.ui import session as sess
from cloud_service.ui.render import render

router = APIRouter(prefix="/ui", include_in_schema=False)
Next = Annotated[str | None, Query(max_length=2000)]


def _form(request: Request, next_path: str, status: int = 200, error: str | None = None
          ) -> HTMLResponse:
    """The login form, with a cookie of its own holding the form's CSRF token."""
    csrf = sess.new_csrf()
    page = render(request, "login.html", None, status=status, next=next_path, error=error,
                  csrf=csrf, title="Log in")
    sess.start_login(request, page, csrf)
    return page


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, session: SessionDep, next: Next = None) -> Response:
    if sess.current_viewer(request, session) is not None:  # already logged in
        return RedirectResponse(sess.safe_next(next), status_code=303)
    return _form(request, sess.safe_next(next))


@router.post("/login")
def login(request: Request, session: SessionDep,
          form: Annotated[dict[str, str], Depends(sess.read_form)]) -> Response:
    """Checks the form's CSRF token against the login form's cookie, then the API token;
    on success a new session with a new CSRF token."""
    expected = sess.login_csrf(request)
    if not expected:
        return _form(request, sess.safe_next(form.get("next")), status=403,
                     error="The login form expired; log in again.")
    sess.check_csrf(expected, form)
    next_path = sess.safe_next(form.get("next"))
    token = form.get("token", "").strip()
    digest = security.hash_token(token)
    if not token.startswith(security.USER_PREFIX) or \
            auth_svc.resolve_user_digest(session=session, token_hash=digest) is None:
        return _form(request, next_path, status=401,
                     error="Unknown, expired or revoked API token. Paste a user API token "
                           "(hadmc_u_...): `hadmc token create` prints one.")
    response = RedirectResponse(next_path, status_code=303)
    sess.start_session(request, response, digest)
    return response


@router.post("/logout")
def logout(request: Request, form: sess.FormDep) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    sess.clear_cookie(request, response)
    return response
