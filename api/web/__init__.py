"""The web pages of `shoal serve`: clusters, plans, approvals, runs and the audit log for people.

Server-rendered (Jinja2, autoescaped) on the API's own port, from the same store queries and
API schemas as the JSON routes; a little JavaScript (static/shoal.js) only makes a running
run's page follow it live, and every page reads the same without it. Nothing is fetched from
outside the server. `install(app)` adds the pages, their static files and the handler that
sends a browser without a session to the sign-in page.

Modules: `session` (sign-in cookie, CSRF, roles), `forms` (reading a posted form), `render`
(templates, filters, security headers), `views` (what a page shows, built from store records),
and one module of routes per page: `pages_auth`, `pages_overview`, `pages_plan`, `pages_run`,
`pages_audit`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from api.web import pages_audit, pages_auth, pages_overview, pages_plan, pages_run
from api.web.render import render
from api.web.session import SignInRequired, current_user, sign_in_redirect

STATIC = Path(__file__).with_name("static")
ROUTERS = (
    pages_auth.router,
    pages_overview.router,
    pages_plan.router,
    pages_run.router,
    pages_audit.router,
)


def install(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    app.add_exception_handler(SignInRequired, sign_in_redirect)
    app.add_exception_handler(HTTPException, _http_error)


async def _http_error(request: Request, exc: Exception) -> Response:
    """A page's error as a page (the JSON API's errors stay FastAPI's JSON)."""
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith("/ui"):
        return await http_exception_handler(request, exc)
    return render(
        request, "error.html", current_user(request), exc.status_code, detail=exc.detail
    )
