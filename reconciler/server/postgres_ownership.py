"""Cluster ownership among servers sharing one PostgreSQL store, by advisory locks.

A cluster belongs to the server holding its session-level advisory lock: `pg_try_advisory_lock`
on a connection of the server's own, kept open for as long as it owns anything. The lock lives
and dies with that session: a server killed, or cut off long enough for its session to end,
loses every cluster at once, and another server's next claim gets them. Each acquisition bumps
the cluster's owner epoch in the store; the epochs are the fence its runs write under, so a
server that lost a cluster cannot record anything of it after the new owner took over
(`store.owners`).

The session is checked before each claim; a session found broken means every cluster was lost
(its runs are fenced out from the next acquisition on), and a new one is opened. Keepalives are
set on it (`postgres_engine.CONNECTION_DEFAULTS`), so a dead peer is noticed in under a minute.
No PgBouncer in transaction pooling between: it would hand the session's locks to others.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import zlib
from collections.abc import Sequence
from typing import Any

import psycopg

from reconciler.server.ownership import Claim, Ownership
from reconciler.server.store.database import Store
from reconciler.server.store.owners import Fence

log = logging.getLogger("shoal.ownership")

# How often a server looks for clusters whose owner is gone (died, or lost its session): the
# bound on a takeover, beside the time the database takes to end a dead session.
WATCH_SECONDS = 5.0

# The first key of the two-key advisory locks: shoal's clusters, apart from other users of the
# database (the store's write lock is in the one-key space).
LOCK_NAMESPACE = 0x73686F61


def lock_key(cluster: str) -> int:
    """The advisory lock's second key for `cluster`: a stable 31-bit hash of its name (two
    clusters sharing one only means one server owns both)."""
    return zlib.crc32(cluster.encode()) & 0x7FFFFFFF


class PostgresOwnership(Ownership):
    """Clusters owned through advisory locks on a session connection of this server's own."""

    def __init__(
        self, conninfo: str, store: Store, name: str, watch_interval: float = WATCH_SECONDS
    ) -> None:
        self.watch_interval = watch_interval
        self.conninfo = conninfo
        self.store = store
        self.name = name
        self._lock = threading.Lock()
        self._session: psycopg.Connection[Any] | None = None
        self._epochs: dict[str, int] = {}

    def fence(self, unit: Sequence[str]) -> Fence | None:
        return {c: self._epochs[c] for c in sorted(unit) if c in self._epochs} or None

    def owned(self) -> dict[str, int]:
        return dict(self._epochs)

    async def claim(self, unit: Sequence[str]) -> Claim:
        return await asyncio.to_thread(self._claim, tuple(sorted(unit)))

    def _claim(self, unit: tuple[str, ...]) -> Claim:
        with self._lock:
            try:
                return self._claim_on(self._live_session(), unit)
            except psycopg.OperationalError as exc:
                # The database cannot be reached: owning cannot be proven, so nothing is owned.
                log.warning("cannot claim clusters", extra={"clusters": unit, "error": str(exc)})
                self._drop_session()
                return Claim(owned=False)

    def _claim_on(self, session: psycopg.Connection[Any], unit: tuple[str, ...]) -> Claim:
        taken: list[str] = []
        for cluster in unit:
            if cluster in self._epochs:
                continue
            row = session.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_NAMESPACE, lock_key(cluster))
            ).fetchone()
            if row is None or row[0] is not True:
                # Another server holds it: give back what this claim took, own nothing new.
                for other in taken:
                    self._unlock(session, other)
                    del self._epochs[other]
                return Claim(owned=False)
            self._epochs[cluster] = self.store.own_cluster(cluster, self.name)
            taken.append(cluster)
            log.info(
                "cluster owned",
                extra={"cluster": cluster, "epoch": self._epochs[cluster], "by": self.name},
            )
        return Claim(owned=True, fence=self.fence(unit), acquired=tuple(taken))

    def _live_session(self) -> psycopg.Connection[Any]:
        """The session, checked; a broken one means every lock is gone: forget them all."""
        if self._session is not None:
            try:
                self._session.execute("SELECT 1")
                return self._session
            except psycopg.OperationalError as exc:
                lost = sorted(self._epochs)
                log.warning("ownership session lost", extra={"clusters": lost, "error": str(exc)})
                self._drop_session()
        # Named, so that pg_stat_activity tells which session holds a server's clusters.
        self._session = psycopg.connect(
            self.conninfo, autocommit=True, application_name=f"shoal-ownership {self.name}"
        )
        return self._session

    def _drop_session(self) -> None:
        self._epochs.clear()
        if self._session is not None:
            self._session.close()
            self._session = None

    @staticmethod
    def _unlock(session: psycopg.Connection[Any], cluster: str) -> None:
        session.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, lock_key(cluster)))

    def holds(self, unit: Sequence[str]) -> bool:
        with self._lock:
            if any(c not in self._epochs for c in unit) or self._session is None:
                return False
            try:
                self._session.execute("SELECT 1")
                return True
            except psycopg.OperationalError as exc:
                lost = sorted(self._epochs)
                log.warning("ownership session lost", extra={"clusters": lost, "error": str(exc)})
                self._drop_session()
                return False

    def session_pid(self) -> int | None:
        """The backend pid of the session holding the locks (for tests that end it)."""
        with self._lock:
            if self._session is None:
                return None
            return int(self._session.info.backend_pid)

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                # Closing the session releases every lock it holds.
                self._session.close()
                self._session = None
            self._epochs.clear()
