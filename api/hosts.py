"""GET /hosts/{name}/facts: the facts the last pass gathered from one host."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status

from api.auth import Viewer, auth_responses
from api.deps import get_store
from api.params import HostNamePath
from api.schemas import HostFactsOut, Problem, facts_out
from reconciler.server.store.database import Store

router = APIRouter(tags=["hosts"])


@router.get(
    "/hosts/{name}/facts",
    responses={**auth_responses("viewer"), 404: {"model": Problem}},
)
def host_facts(
    name: HostNamePath, _: Viewer, store: Annotated[Store, Depends(get_store)]
) -> HostFactsOut:
    record = store.get_host_facts(name)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no facts for host {name}")
    return facts_out(record)
