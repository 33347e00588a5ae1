"""The operator dashboard at ``/ui``: server-rendered pages, one route module per resource.

Each page calls the same service functions as the REST route for its resource
(``cloud_service/services``). Sessions and CSRF are in ``session``; templates and the
headers of every page in ``render`` (``docs/dashboard.md``)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from cloud_service.ui import devices, fleet, jobs, login, rollouts, versions
from cloud_service.ui.render import HERE, error_page
from cloud_service.ui.session import BadForm, LoginRequired, Refused, login_url

ROUTERS = tuple(m.router for m in (login, fleet, devices, versions, rollouts, jobs))


def install(app: FastAPI) -> None:
    """Serve the pages, their static files, and the answers to a missing session
    (a redirect to the login form), a refused CSRF token or role (403) and a bad form."""

    async def _login(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return RedirectResponse(login_url(exc.next_path), status_code=303)

    async def _refused(request: Request, exc: Exception) -> HTMLResponse:
        assert isinstance(exc, Refused)
        return error_page(request, exc.viewer, 403, str(exc))

    async def _bad_form(request: Request, exc: Exception) -> HTMLResponse:
        assert isinstance(exc, BadForm)
        return error_page(request, None, exc.status, str(exc))

    app.add_exception_handler(LoginRequired, _login)
    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(BadForm, _bad_form)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    for router in ROUTERS:
        app.include_router(router)
