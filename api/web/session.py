"""Web sign-in: an API token exchanged for a session cookie; CSRF tokens; the roles' checks.

The cookie holds a random secret (the store keeps its hash) and is HttpOnly, SameSite=Strict,
and Secure whenever the request came over TLS (directly, or through a proxy uvicorn trusts for
X-Forwarded-Proto). Every state-changing form carries the session's CSRF token, compared in
constant time; a POST without it, or from a role too low, is 403 before anything happens.
A GET without a live session goes to the sign-in page (and back afterwards).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response

from api.deps import get_settings, get_store
from reconciler.server.store.records import ROLE_RANK, Role, SessionRecord, TokenRecord

COOKIE = "shoal_session"
SIGN_IN_PATH = "/ui/sign-in"


@dataclass(frozen=True, slots=True)
class WebUser:
    """The person behind a request: their token (name, role) and their session."""

    token: TokenRecord
    session: SessionRecord

    @property
    def csrf(self) -> str:
        return self.session.csrf

    def can(self, role: Role) -> bool:
        return ROLE_RANK[self.token.role] >= ROLE_RANK[role]


class SignInRequired(Exception):
    """No live session for a page: send the browser to sign in, then back to `next_path`."""

    def __init__(self, next_path: str, expired: bool) -> None:
        super().__init__(next_path)
        self.next_path = next_path
        self.expired = expired


async def sign_in_redirect(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    query = f"?next={quote(exc.next_path, safe='/')}"
    if exc.expired:
        query += "&expired=1"
    response = RedirectResponse(SIGN_IN_PATH + query, status.HTTP_303_SEE_OTHER)
    if exc.expired:
        forget(response, request)
    return response


def is_tls(request: Request) -> bool:
    return request.url.scheme == "https"


def remember(response: Response, request: Request, secret: str) -> None:
    # No Max-Age: the cookie ends with the browser, and the store ends the session at its
    # expiry, so the page can say that it ended rather than silently asking to sign in.
    response.set_cookie(
        COOKIE,
        secret,
        path="/",
        httponly=True,
        secure=is_tls(request),
        samesite="strict",
    )


def forget(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, secure=is_tls(request), samesite="strict"
    )


def session_lifetime(request: Request) -> timedelta:
    return timedelta(seconds=get_settings(request).session_lifetime)


def current_user(request: Request) -> WebUser | None:
    secret = request.cookies.get(COOKIE)
    if not secret:
        return None
    found = get_store(request).session_of(secret)
    return None if found is None else WebUser(token=found[1], session=found[0])


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a path of this server's pages only, never another site."""
    if not path or not path.startswith("/ui") or path.startswith("//"):
        return "/ui/"
    parts = urlsplit(path)
    if parts.scheme or parts.netloc:
        return "/ui/"
    return path


def page_user(request: Request) -> WebUser:
    """A dependency of every page: the signed-in person, or off to the sign-in page."""
    user = current_user(request)
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(safe_next(target), expired=COOKIE in request.cookies)
    return user


def check_post(request: Request, form: dict[str, str], role: Role) -> WebUser:
    """A state-changing form's gate: a live session, its CSRF token, at least `role`."""
    user = current_user(request)
    if user is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "sign in first (no live session)")
    sent = form.get("csrf", "")
    if not sent or not hmac.compare_digest(sent.encode(), user.csrf.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the form's CSRF token is missing or wrong")
    if not user.can(role):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"this needs the {role} role; you are {user.token.role}"
        )
    return user


PageUser = Annotated[WebUser, Depends(page_user)]
