"""GET /audit: the audit log, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.auth import Viewer
from api.deps import get_store
from api.schemas import AuditOut, audit_out
from reconciler.store import Store

router = APIRouter(tags=["audit"])


@router.get("/audit")
def list_audit(
    _: Viewer,
    store: Annotated[Store, Depends(get_store)],
    cluster: str | None = None,
    action: str | None = None,
    after_id: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[AuditOut]:
    records = store.list_audit(cluster=cluster, action=action, after_id=after_id, limit=limit)
    return [audit_out(r) for r in records]
