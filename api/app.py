"""`create_app(controller, store, settings) -> FastAPI`: the app factory.

Routers are listed explicitly; the lifespan starts the controller's loop and stops it (letting a
running apply finish first). Domain errors become HTTP statuses in one place, here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from api import (
    audit,
    clusters,
    health,
    hosts,
    locks,
    metrics,
    plans,
    reconcile,
    runs,
    web,
    webhooks,
)
from api.deps import ControllerPort
from api.schemas import Conflict, Problem
from reconciler.errors import HostKeyRejected, SourceError, TransportError
from reconciler.server.lifecycle import (
    AlreadyApproved,
    AlreadyOverridden,
    PlanNotFound,
    PlanNotPending,
    StaleApproval,
)
from reconciler.server.settings import ServerSettings
from reconciler.server.store.database import Store

ROUTERS = (
    health.router,
    clusters.router,
    plans.router,
    runs.router,
    hosts.router,
    reconcile.router,
    webhooks.router,
    audit.router,
    metrics.router,
    locks.router,
)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(Problem(detail=str(exc)).model_dump(), status.HTTP_404_NOT_FOUND)


async def _not_pending(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PlanNotPending)
    body = Conflict(detail=str(exc), plan_id=exc.plan_id, state=exc.state)
    return JSONResponse(body.model_dump(), status.HTTP_409_CONFLICT)


async def _already_approved(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AlreadyApproved)
    body = Conflict(detail=str(exc), plan_id=exc.plan_id, state="pending",
                    reason=f"needs {exc.required} approvals by different tokens")  # fmt: skip
    return JSONResponse(body.model_dump(), status.HTTP_409_CONFLICT)


async def _already_overridden(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AlreadyOverridden)
    record = request.app.state.store.get_plan(exc.plan_id)
    body = Conflict(detail=str(exc), plan_id=exc.plan_id,
                    state=record.state if record else "missing",
                    reason="the freeze is overridden for it already")  # fmt: skip
    return JSONResponse(body.model_dump(), status.HTTP_409_CONFLICT)


async def _stale(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StaleApproval)
    body = Conflict(
        detail=str(exc),
        plan_id=exc.plan_id,
        state="stale" if exc.hosts else "superseded",
        reason=exc.reason,
        hosts=exc.hosts,
        new_plan_id=exc.new_plan_id,
    )
    return JSONResponse(body.model_dump(), status.HTTP_409_CONFLICT)


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    # The hosts or git could not be read, so nothing was decided; the client may retry.
    return JSONResponse(Problem(detail=str(exc)).model_dump(), status.HTTP_503_SERVICE_UNAVAILABLE)


def create_app(controller: ControllerPort, store: Store, settings: ServerSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await controller.start()
        try:
            yield
        finally:
            await controller.stop()

    app = FastAPI(
        title="shoal",
        summary="GitOps reconciler for LVS Direct Routing clusters",
        version="0.1.0",
        lifespan=lifespan,
        exception_handlers={
            PlanNotFound: _not_found,
            PlanNotPending: _not_pending,
            AlreadyApproved: _already_approved,
            AlreadyOverridden: _already_overridden,
            StaleApproval: _stale,
            SourceError: _unavailable,
            TransportError: _unavailable,
            HostKeyRejected: _unavailable,
        },
    )
    app.state.controller = controller
    app.state.store = store
    app.state.settings = settings
    for router in ROUTERS:
        app.include_router(router)
    web.install(app)  # the pages for people, on the same port and with the same roles
    return app
