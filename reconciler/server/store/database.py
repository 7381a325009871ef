"""`Store`: the server's store, the query modules of this package over one engine.

`Store.open(state_dir)` is the SQLite file in the state directory (the default, one server);
`Store.connect(url)` a PostgreSQL database (`postgresql://...`, several servers may share it);
`open_store` picks between them from the server's settings. Opening applies the migrations the
database lacks.
"""

from __future__ import annotations

import re
from pathlib import Path

from reconciler.server.store.access import AccessQueries
from reconciler.server.store.audit import AuditQueries
from reconciler.server.store.cluster_locks import ClusterLockQueries
from reconciler.server.store.connection import Engine
from reconciler.server.store.freeze_overrides import FreezeOverrideQueries
from reconciler.server.store.migrations import migrate
from reconciler.server.store.owners import OwnerQueries
from reconciler.server.store.plans import PlanQueries
from reconciler.server.store.runs import RunQueries
from reconciler.server.store.sessions import SessionQueries
from reconciler.server.store.sqlite_engine import SQLiteEngine
from reconciler.server.store.status import StatusQueries
from reconciler.server.store.totals import TotalsQueries

DB_FILENAME = "shoal.db"
POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


class StoreUrlError(ValueError):
    """A store URL that names no store shoal can open."""


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
    OwnerQueries,
):
    """The store. Open with `Store.open(state_dir)` or `Store.connect(url)`; close with
    `close()`."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        with self._tx() as db:
            migrate(db)

    @classmethod
    def open(cls, state_dir: Path) -> Store:
        return cls(SQLiteEngine(state_dir / DB_FILENAME))

    @classmethod
    def connect(cls, url: str) -> Store:
        if not url.startswith(POSTGRESQL_SCHEMES):
            raise StoreUrlError(
                f"store {redact_store_url(url)!r}: not a postgresql:// URL "
                "(leave the store unset for the SQLite file in the state directory)"
            )
        # Imported here: a server on SQLite never loads the PostgreSQL driver.
        from reconciler.server.store.postgres_engine import PostgresEngine

        return cls(PostgresEngine(url, name=redact_store_url(url)))

    def schema_version(self) -> int:
        rows = self._query("SELECT MAX(version) FROM schema_migrations")
        return int(rows[0][0] or 0)

    def ping(self) -> bool:
        return bool(self._query("SELECT 1")[0][0] == 1)


def open_store(state_dir: Path, url: str | None) -> Store:
    """The PostgreSQL store at `url` if one is given, else the SQLite file in `state_dir`."""
    return Store.connect(url) if url else Store.open(state_dir)


def redact_store_url(url: str) -> str:
    """`url` without its password (in the user part or a `password=` parameter), for messages
    and logs."""
    url = re.sub(r"([?&]password=)[^&]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.partition("@")
    if not sep or not at or "/" in userinfo or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"
