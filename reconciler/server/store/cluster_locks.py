"""Store queries of an admin's cluster locks (an incident, a change freeze by hand): while a
cluster is locked nothing of it applies, an approved plan waits, drift is not healed."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.server.store.connection import Connection
from reconciler.server.store.records import utcnow


@dataclass(frozen=True, slots=True)
class ClusterLock:
    cluster: str
    reason: str
    actor: str
    locked_at: str


class ClusterLockQueries(Connection):
    def lock_cluster(self, cluster: str, *, reason: str, actor: str) -> ClusterLock | None:
        """Lock `cluster`; None if it is locked already (the first lock and its reason stay)."""
        now = utcnow()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO cluster_locks (cluster, reason, actor, locked_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (cluster) DO NOTHING",
                (cluster, reason, actor, now),
            )
            if cur.rowcount != 1:
                return None
        return ClusterLock(cluster, reason, actor, now)

    def unlock_cluster(self, cluster: str) -> ClusterLock | None:
        """Remove the lock; the lock that was there, or None if there was none."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM cluster_locks WHERE cluster = ?", (cluster,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM cluster_locks WHERE cluster = ?", (cluster,))
        return ClusterLock(row["cluster"], row["reason"], row["actor"], row["locked_at"])

    def cluster_locks(self) -> dict[str, ClusterLock]:
        return {
            str(r["cluster"]): ClusterLock(r["cluster"], r["reason"], r["actor"], r["locked_at"])
            for r in self._query("SELECT * FROM cluster_locks ORDER BY cluster")
        }
