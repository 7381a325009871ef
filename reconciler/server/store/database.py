"""`Store`: the server's SQLite store, the query modules of this package over one connection.

Open with `Store.open(state_dir)`; opening applies the migrations a file lacks.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.server.store.access import AccessQueries
from reconciler.server.store.audit import AuditQueries
from reconciler.server.store.cluster_locks import ClusterLockQueries
from reconciler.server.store.freeze_overrides import FreezeOverrideQueries
from reconciler.server.store.migrations import migrate
from reconciler.server.store.plans import PlanQueries
from reconciler.server.store.runs import RunQueries
from reconciler.server.store.sessions import SessionQueries
from reconciler.server.store.status import StatusQueries
from reconciler.server.store.totals import TotalsQueries

DB_FILENAME = "shoal.db"


class Store(
    StatusQueries,
    PlanQueries,
    RunQueries,
    AuditQueries,
    AccessQueries,
    SessionQueries,
    TotalsQueries,
    ClusterLockQueries,
    FreezeOverrideQueries,
):
    """The SQLite store. Open with `Store.open(state_dir)`; close with `close()`."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        with self._tx() as db:
            migrate(db)

    @classmethod
    def open(cls, state_dir: Path) -> Store:
        return cls(state_dir / DB_FILENAME)

    def schema_version(self) -> int:
        rows = self._query("SELECT MAX(version) FROM schema_migrations")
        return int(rows[0][0] or 0)

    def ping(self) -> bool:
        return bool(self._query("SELECT 1")[0][0] == 1)
