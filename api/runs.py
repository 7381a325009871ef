"""GET /runs/{id}: one apply, every step's result, rollback details, backups, verification."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status

from api.auth import Viewer, auth_responses
from api.deps import get_store
from api.params import RunIdPath
from api.schemas import Problem, RunOut, run_out
from reconciler.server.store.database import Store

router = APIRouter(tags=["runs"])


@router.get("/runs/{run_id}", responses={**auth_responses("viewer"), 404: {"model": Problem}})
def show_run(run_id: RunIdPath, _: Viewer, store: Annotated[Store, Depends(get_store)]) -> RunOut:
    run = store.get_run(run_id)
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id}")
    return run_out(run, store.step_results(run_id), store.backups(run_id=run_id))
