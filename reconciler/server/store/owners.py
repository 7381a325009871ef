"""Store queries of cluster ownership among servers sharing one store, and the fence check.

A server that takes a cluster's lock (`reconciler.server.ownership`) bumps the cluster's owner
epoch here; a run keeps the epochs it runs under (its fence). Every write of a run checks, in
its own transaction, that its fence is still current: a server that lost a cluster to another
(its lock went with its database session) cannot write a step, a backup or an outcome after the
new owner took over, even if its SSH apply outlived the lock. Writers are serialized (the
engines' one write lock), so no bump can fall between the check and the write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.server.store.connection import Connection, Tx, from_json, to_json
from reconciler.server.store.records import FencedOut, utcnow

Fence = Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ClusterOwner:
    cluster: str
    epoch: int
    owner: str
    acquired_at: str


class OwnerQueries(Connection):
    def own_cluster(self, cluster: str, owner: str) -> int:
        """Record `owner` as the cluster's owner under a new epoch, and return the epoch. Only
        for the holder of the cluster's lock, just after it took it."""
        with self._tx() as db:
            row = db.execute(
                "INSERT INTO cluster_owners (cluster, epoch, owner, acquired_at) "
                "VALUES (?, 1, ?, ?) ON CONFLICT (cluster) DO UPDATE SET "
                "epoch = cluster_owners.epoch + 1, owner = excluded.owner, "
                "acquired_at = excluded.acquired_at RETURNING epoch",
                (cluster, owner, utcnow()),
            ).fetchone()
        assert row is not None  # RETURNING of the row just written
        return int(row[0])

    def cluster_owner(self, cluster: str) -> ClusterOwner | None:
        rows = self._query("SELECT * FROM cluster_owners WHERE cluster = ?", (cluster,))
        if not rows:
            return None
        r = rows[0]
        return ClusterOwner(r["cluster"], int(r["epoch"]), r["owner"], r["acquired_at"])

    def check_fence(self, fence: Fence | None, *, run_id: str | None = None) -> None:
        """Raise FencedOut unless every epoch of `fence` is its cluster's current one."""
        with self._tx() as db:
            fence_current_tx(db, fence, run_id)

    def adopt_run(self, run_id: str, fence: Fence) -> None:
        """Put a run under `fence` (a new owner taking over an interrupted run); `fence` must
        be current. The run's former owner can write nothing of it any more."""
        with self._tx() as db:
            fence_current_tx(db, fence, run_id)
            db.execute(
                "UPDATE runs SET fence_json = ? WHERE id = ?", (to_json(dict(fence)), run_id)
            )


def fence_current_tx(db: Tx, fence: Fence | None, run_id: str | None) -> None:
    """FencedOut unless every epoch of `fence` is current, in the caller's transaction."""
    for cluster, epoch in sorted((fence or {}).items()):
        row = db.execute(
            "SELECT epoch FROM cluster_owners WHERE cluster = ?", (cluster,)
        ).fetchone()
        current = None if row is None else int(row[0])
        if current != epoch:
            raise FencedOut(run_id, cluster, epoch, current)


def run_fence_tx(db: Tx, run_id: str, fence: Fence | None) -> None:
    """FencedOut unless the writer's `fence` is the run's own and is current, in the caller's
    transaction. A run without a fence (one server owning everything) takes unfenced writes."""
    row = db.execute("SELECT fence_json FROM runs WHERE id = ?", (run_id,)).fetchone()
    stored = None if row is None else from_json(row[0])
    if stored is None and fence is None:
        return
    if stored != (None if fence is None else dict(fence)):
        first = sorted((stored or fence or {}).items())[0]
        have = None if fence is None else fence.get(first[0])
        raise FencedOut(run_id, first[0], have, (stored or {}).get(first[0]))
    fence_current_tx(db, fence, run_id)
