"""POST /reconcile: an admin wakes the loop now (the pass itself reads git and the hosts)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from api.auth import Admin, auth_responses
from api.deps import ControllerPort, get_controller, get_store
from api.schemas import ReconcileAccepted
from reconciler.server.store.database import Store

router = APIRouter(tags=["reconcile"])


@router.post("/reconcile", status_code=202, responses=auth_responses("admin"))
def reconcile_now(
    token: Admin,
    controller: Annotated[ControllerPort, Depends(get_controller)],
    store: Annotated[Store, Depends(get_store)],
) -> ReconcileAccepted:
    request_pass(store, controller, token.actor)
    return ReconcileAccepted(queued=True)


def request_pass(store: Store, controller: ControllerPort, actor: str) -> None:
    """Audit the request, then wake the loop (also the web page's "Reconcile now")."""
    store.audit("reconcile.requested", actor=actor)
    controller.wake(f"requested by {actor}")
