"""GET /healthz (the process answers) and GET /readyz (store reachable, loop recovered)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from api.deps import ControllerPort, get_controller, get_store
from api.schemas import Health, Ready
from reconciler.server.store.database import Store

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
def readyz(
    store: Annotated[Store, Depends(get_store)],
    controller: Annotated[ControllerPort, Depends(get_controller)],
) -> JSONResponse:
    try:
        store_ok = store.ping()
    except Exception:
        store_ok = False
    checks = {"store": store_ok, "controller": bool(controller.ready)}
    ready = all(checks.values())
    body = Ready(ready=ready, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
