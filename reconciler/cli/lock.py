"""`shoal lock CLUSTER --reason R`, `shoal unlock CLUSTER` and `shoal override-freeze PLAN
--reason R`, on a server's state dir.

The same lock the API's admin routes set: written to the store, audited with the person's
name (`--by`, default the login name). A running server sees a lock at its next decision and
an unlock at its next pass (POST /clusters/{name}/unlock wakes it at once).
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from pathlib import Path

from reconciler.server.store.database import Store


def actor_of(by: str | None) -> str:
    return f"cli:{by or getpass.getuser()}"


def run_lock(state_dir: Path, cluster: str, reason: str, by: str | None,
             echo: Callable[[str], None]) -> int:  # fmt: skip
    store = Store.open(state_dir)
    try:
        actor = actor_of(by)
        lock = store.lock_cluster(cluster, reason=reason, actor=actor)
        if lock is None:
            held = store.cluster_locks()[cluster]
            echo(f"{cluster}: locked already by {held.actor} since {held.locked_at}: {held.reason}")
            return 1
        store.audit("cluster.locked", actor=actor, cluster=cluster, detail={"reason": reason})
        echo(f"{cluster}: locked by {actor}: nothing of it applies until `shoal unlock {cluster}`")
        return 0
    finally:
        store.close()


def run_unlock(state_dir: Path, cluster: str, by: str | None,
               echo: Callable[[str], None]) -> int:  # fmt: skip
    store = Store.open(state_dir)
    try:
        actor = actor_of(by)
        lock = store.unlock_cluster(cluster)
        if lock is None:
            echo(f"{cluster}: not locked")
            return 1
        store.audit("cluster.unlocked", actor=actor, cluster=cluster,
                    detail={"reason": lock.reason, "locked_by": lock.actor})  # fmt: skip
        echo(f"{cluster}: unlocked (was locked by {lock.actor}: {lock.reason})")
        return 0
    finally:
        store.close()


def run_override(state_dir: Path, plan_id: str, reason: str, by: str | None,
                 echo: Callable[[str], None]) -> int:  # fmt: skip
    """Let one pending or approved plan start during a freeze (the API's override-freeze)."""
    store = Store.open(state_dir)
    try:
        actor = actor_of(by)
        record = store.get_plan(plan_id)
        if record is None or record.state not in ("pending", "approved"):
            echo(f"{plan_id}: " + (f"is {record.state}, not pending or approved" if record
                                   else "no such plan"))  # fmt: skip
            return 1
        if store.override_freeze(plan_id, reason=reason, actor=actor) is None:
            echo(f"{plan_id}: the freeze is overridden for it already")
            return 1
        store.audit("plan.freeze_overridden", actor=actor, cluster=record.cluster,
                    plan_id=plan_id, detail={"reason": reason})  # fmt: skip
        echo(f"{plan_id}: may start during a freeze (a lock still holds it); the server "
             "starts it at its next pass")
        return 0
    finally:
        store.close()
