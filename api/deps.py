"""What a route needs from the app: the controller, the store and the settings.

`ControllerPort` is the part of `reconciler.server.controller.Controller` the API uses; routes
depend on it, not on the engine, so the API stays a thin layer over the store and the controller.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from fastapi import Request

from reconciler.desired.models import Desired
from reconciler.server.gate import Hold
from reconciler.server.lifecycle import ApprovalRecorded
from reconciler.server.metrics import ServerMetrics
from reconciler.server.settings import ServerSettings
from reconciler.server.source import CommitInfo
from reconciler.server.store.database import Store
from reconciler.server.store.freeze_overrides import FreezeOverride
from reconciler.server.store.records import PlanRecord, RunRecord


class ControllerPort(Protocol):
    ready: bool
    head: str | None
    head_errors: list[dict[str, Any]]
    last_source_error: str | None
    last_pass_at: str | None
    wake_requests: int
    passes: int
    passes_completed: int

    @property
    def metrics(self) -> ServerMetrics: ...

    def wake(self, reason: str) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def approve(
        self, plan_id: str, *, actor: str, comment: str = ""
    ) -> RunRecord | ApprovalRecorded: ...

    async def reject(self, plan_id: str, *, actor: str, comment: str = "") -> PlanRecord: ...

    async def override_freeze(
        self, plan_id: str, *, actor: str, reason: str
    ) -> FreezeOverride: ...

    async def hold_of(self, record: PlanRecord) -> Hold | None: ...

    async def describe(self, sha: str) -> CommitInfo | None: ...

    async def desired_at(self, sha: str) -> Desired | None: ...


def get_store(request: Request) -> Store:
    return cast(Store, request.app.state.store)


def get_controller(request: Request) -> ControllerPort:
    return cast(ControllerPort, request.app.state.controller)


def get_settings(request: Request) -> ServerSettings:
    return cast(ServerSettings, request.app.state.settings)
