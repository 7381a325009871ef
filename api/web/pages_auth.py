"""Sign-in and sign-out pages: an API token in, a session cookie out, and back.

The sign-in form is protected against login CSRF by a double-submit value (a short-lived
SameSite=Strict cookie that the form must repeat): another site cannot sign a browser into
someone else's session. The token itself is only ever compared by hash (`Store.authenticate`).
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Request, status
from fastapi.responses import RedirectResponse, Response

from api.deps import get_store
from api.web.forms import read_form
from api.web.render import render
from api.web.session import (
    COOKIE,
    check_post,
    current_user,
    forget,
    is_tls,
    remember,
    safe_next,
    session_lifetime,
)

router = APIRouter(include_in_schema=False)

SIGN_IN_COOKIE = "shoal_sign_in"


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status.HTTP_303_SEE_OTHER)


def _sign_in_page(
    request: Request, next_path: str, message: str = "", status_code: int = 200
) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = render(
        request,
        "sign_in.html",
        None,
        status_code,
        next_path=next_path,
        nonce=nonce,
        message=message,
        expired=request.query_params.get("expired") == "1",
        signed_out=request.query_params.get("signed_out") == "1",
    )
    response.set_cookie(
        SIGN_IN_COOKIE, nonce, max_age=900, path="/ui/sign-in", httponly=True,
        secure=is_tls(request), samesite="strict",
    )  # fmt: skip
    return response


@router.get("/ui/sign-in")
def sign_in_form(request: Request, next: str = "/ui/") -> Response:
    if current_user(request) is not None:
        return RedirectResponse(safe_next(next), status.HTTP_303_SEE_OTHER)
    return _sign_in_page(request, safe_next(next))


@router.post("/ui/sign-in")
async def sign_in(request: Request) -> Response:
    form = await read_form(request)
    next_path = safe_next(form.get("next"))
    sent, expected = form.get("nonce", ""), request.cookies.get(SIGN_IN_COOKIE, "")
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _sign_in_page(
            request, next_path, "The sign-in form had expired; please try again.", 403
        )
    store = get_store(request)
    token = store.authenticate(form.get("token", "").strip())
    if token is None:
        return _sign_in_page(request, next_path, "That token is unknown or revoked.", 401)
    lifetime = session_lifetime(request)
    session, secret = store.open_session(token, lifetime)
    store.audit("session.opened", actor=token.actor, detail={"expires_at": session.expires_at})
    response = RedirectResponse(next_path, status.HTTP_303_SEE_OTHER)
    remember(response, request, secret)
    response.delete_cookie(SIGN_IN_COOKIE, path="/ui/sign-in")
    return response


@router.post("/ui/sign-out")
async def sign_out(request: Request) -> Response:
    form = await read_form(request)
    user = check_post(request, form, "viewer")
    store = get_store(request)
    store.end_session(request.cookies[COOKIE])
    store.audit("session.closed", actor=user.token.actor)
    response = RedirectResponse("/ui/sign-in?signed_out=1", status.HTTP_303_SEE_OTHER)
    forget(response, request)
    return response
