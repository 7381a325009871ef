"""Bearer-token authentication and the three roles: viewer < approver < admin.

No token (or an unknown one) is 401; a token whose role is too low is 403. Tokens are checked
by `Store.authenticate` (sha256 of the token, constant-time compare); the token itself is never
logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import get_store
from api.schemas import Problem
from reconciler.server.store.records import ROLE_RANK, Role, TokenRecord

log = logging.getLogger("shoal.api.auth")

_bearer = HTTPBearer(auto_error=False, description="a token from `shoal token create`")


def require_role(role: Role) -> Callable[..., TokenRecord]:
    """A dependency that returns the caller's token if its role is at least `role`."""

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> TokenRecord:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "a bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        token = get_store(request).authenticate(credentials.credentials)
        if token is None:
            log.warning("invalid token", extra={"path": request.url.path})
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "invalid or revoked token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if ROLE_RANK[token.role] < ROLE_RANK[role]:
            log.warning(
                "role too low",
                extra={"path": request.url.path, "token": token.name, "role": token.role},
            )
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"this needs the {role} role; the token is {token.role}"
            )
        return token

    return dependency


def auth_responses(role: Role) -> dict[int | str, dict[str, Any]]:
    """The answers `require_role(role)` can give, for a route's OpenAPI `responses`."""
    responses: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": "no bearer token, or an unknown or revoked one"}
    }
    if ROLE_RANK[role] > 0:  # every valid token is at least a viewer
        responses[403] = {"model": Problem, "description": f"the token's role is below {role}"}
    return responses


Viewer = Annotated[TokenRecord, Depends(require_role("viewer"))]
Approver = Annotated[TokenRecord, Depends(require_role("approver"))]
Admin = Annotated[TokenRecord, Depends(require_role("admin"))]
