"""Cluster locks: an admin stops every apply of a cluster (an incident, a change freeze by
hand) and lifts the lock again; both are audited. While locked, an approval leaves the plan
approved and waiting, and policy approvals and drift heals do not happen; the first pass after
the unlock (which wakes the loop) starts an approved plan."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status

from api.auth import Admin, Viewer, auth_responses
from api.deps import ControllerPort, get_controller, get_store
from api.params import ClusterNamePath
from api.schemas import LockOut, LockRequest, Problem
from reconciler.server.store.cluster_locks import ClusterLock
from reconciler.server.store.database import Store

router = APIRouter(tags=["locks"])


def lock(store: Store, cluster: str, *, reason: str, actor: str) -> ClusterLock | None:
    """Lock `cluster` and audit it; None (nothing written) if it is locked already."""
    done = store.lock_cluster(cluster, reason=reason, actor=actor)
    if done is not None:
        store.audit("cluster.locked", actor=actor, cluster=cluster, detail={"reason": reason})
    return done


def unlock(store: Store, controller: ControllerPort, cluster: str, *,
           actor: str) -> ClusterLock | None:  # fmt: skip
    """Lift the lock, audit it and wake the loop; None if the cluster was not locked."""
    done = store.unlock_cluster(cluster)
    if done is not None:
        store.audit("cluster.unlocked", actor=actor, cluster=cluster,
                    detail={"reason": done.reason, "locked_by": done.actor})  # fmt: skip
        controller.wake(f"cluster {cluster} unlocked")
    return done


def lock_out(lock: ClusterLock) -> LockOut:
    return LockOut(cluster=lock.cluster, reason=lock.reason, actor=lock.actor,
                   locked_at=lock.locked_at)  # fmt: skip


@router.get("/locks", responses=auth_responses("viewer"))
def list_locks(_: Viewer, store: Annotated[Store, Depends(get_store)]) -> list[LockOut]:
    return [lock_out(lock) for lock in store.cluster_locks().values()]


@router.post(
    "/clusters/{cluster}/lock",
    status_code=201,
    responses={**auth_responses("admin"),
               409: {"model": Problem, "description": "the cluster is locked already"}},
)  # fmt: skip
def lock_cluster(
    cluster: ClusterNamePath,
    body: LockRequest,
    token: Admin,
    store: Annotated[Store, Depends(get_store)],
) -> LockOut:
    done = lock(store, cluster, reason=body.reason, actor=token.actor)
    if done is None:
        held = store.cluster_locks()[cluster]
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"cluster {cluster} is locked already by {held.actor}: {held.reason}")
    return lock_out(done)


@router.post(
    "/clusters/{cluster}/unlock",
    responses={**auth_responses("admin"),
               404: {"model": Problem, "description": "the cluster is not locked"}},
)  # fmt: skip
def unlock_cluster(
    cluster: ClusterNamePath,
    token: Admin,
    store: Annotated[Store, Depends(get_store)],
    controller: Annotated[ControllerPort, Depends(get_controller)],
) -> LockOut:
    done = unlock(store, controller, cluster, actor=token.actor)
    if done is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"cluster {cluster} is not locked")
    return lock_out(done)
