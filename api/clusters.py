"""GET /clusters: per cluster its revisions, last plan, drift and validation errors; the loop's
counters (wakes and passes since the process started)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from api.auth import Viewer, auth_responses
from api.deps import ControllerPort, get_controller, get_settings, get_store
from api.schemas import (
    ClusterOut,
    ClustersResponse,
    LoopOut,
    RepositoryOut,
    cluster_out,
    issues_out,
)
from reconciler.server.settings import ServerSettings
from reconciler.server.source import redact_url
from reconciler.server.store.database import Store

router = APIRouter(tags=["clusters"])


@router.get("/clusters", responses=auth_responses("viewer"))
def list_clusters(
    _: Viewer,
    store: Annotated[Store, Depends(get_store)],
    controller: Annotated[ControllerPort, Depends(get_controller)],
    settings: Annotated[ServerSettings, Depends(get_settings)],
) -> ClustersResponse:
    head = controller.head
    revision = store.get_revision(head) if head else None
    return ClustersResponse(
        repository=RepositoryOut(
            url=redact_url(settings.repo),
            branch=settings.branch,
            head=head,
            head_valid=revision.valid if revision else None,
            head_errors=issues_out(revision.errors if revision else []),
            last_source_error=controller.last_source_error,
            last_pass_at=controller.last_pass_at,
        ),
        loop=LoopOut(
            wakes=controller.wake_requests,
            passes_started=controller.passes,
            passes_completed=controller.passes_completed,
        ),
        clusters=clusters_out(store),
    )


def clusters_out(store: Store) -> list[ClusterOut]:
    """Every known cluster with its last plan (also what the web overview starts from)."""
    out = []
    for record in store.list_clusters():
        last = store.get_plan(record.last_plan_id) if record.last_plan_id else None
        out.append(cluster_out(record, last))
    return out
