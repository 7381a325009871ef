"""GET /audit: the audit log, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from api.auth import Viewer, auth_responses
from api.deps import get_store
from api.params import ActionQuery, ActorQuery, AfterIdQuery, ClusterQuery, LimitQuery
from api.schemas import AuditOut, audit_out
from reconciler.server.store.database import Store

router = APIRouter(tags=["audit"])


@router.get("/audit", responses=auth_responses("viewer"))
def list_audit(
    _: Viewer,
    store: Annotated[Store, Depends(get_store)],
    cluster: ClusterQuery = None,
    action: ActionQuery = None,
    actor: ActorQuery = None,
    after_id: AfterIdQuery = 0,
    limit: LimitQuery = 200,
) -> list[AuditOut]:
    records = store.list_audit(
        cluster=cluster, action=action, actor=actor, after_id=after_id, limit=limit
    )
    return [audit_out(r) for r in records]
