"""The PostgreSQL engine: the store in a database that several servers can share.

psycopg 3's synchronous API, one connection under a lock (the same design as the SQLite engine,
called from the event loop and from FastAPI's threads alike). The connection is in autocommit
mode and each `transaction()` issues BEGIN/COMMIT itself, so nothing waits half-written in an
implicit transaction. Every write transaction first takes one advisory transaction lock: writers
are serialized across every server on the database exactly as SQLite's BEGIN IMMEDIATE does
within one file, so the read-then-write steps of the query modules (a vote on a plan still
pending, the bounded webhook deliveries) keep their meaning under READ COMMITTED. Writes are
rare and short; reads take no lock.

TCP keepalives are on by default (a URL may set its own): a connection whose peer vanished is
noticed in under a minute rather than after the kernel's two hours. A connection found broken
is opened again at the next call; the call that found it fails.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import RowMaker

from reconciler.server.store.connection import Conflict, Engine, Result, Row, StoreUnavailable
from reconciler.server.store.dialect import POSTGRESQL

# The advisory lock every write transaction takes (bigint key space; "shoal" in ASCII, then 1).
WRITE_LOCK_KEY = 0x73686F616C_01

# Libpq parameters set unless the URL says otherwise.
CONNECTION_DEFAULTS = {
    "application_name": "shoal",
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


class NamedRow:
    """A row by position or by column name, like sqlite3.Row."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str, /) -> Any:
        return self._values[key if isinstance(key, int) else self._index[key]]

    def keys(self) -> list[str]:
        return list(self._index)


def named_rows(cursor: psycopg.Cursor[Any]) -> RowMaker[NamedRow]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: NamedRow(values, index)


def conninfo_of(url: str) -> str:
    """The libpq connection string for `url`, with the keepalive defaults where it has none."""
    params = {**CONNECTION_DEFAULTS, **conninfo_to_dict(url)}
    return make_conninfo("", **params)


class _PostgresTx:
    def __init__(self, db: psycopg.Connection[NamedRow]) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return _run(self._db, sql, params)


def _run(db: psycopg.Connection[NamedRow], sql: str, params: Sequence[Any]) -> Result:
    cur = db.execute(POSTGRESQL.sql(sql), params)
    rows: list[Row] = list(cur.fetchall()) if cur.description is not None else []
    return Result(cur.rowcount, rows)


class PostgresEngine(Engine):
    """One connection to a PostgreSQL database, with one transaction per call."""

    dialect = POSTGRESQL

    def __init__(self, url: str, *, name: str) -> None:
        self.name = name  # the URL without its password, for messages
        try:
            self.conninfo = conninfo_of(url)
        except psycopg.ProgrammingError as exc:
            raise StoreUnavailable(f"store {name!r}: not a valid PostgreSQL URL: {exc}") from exc
        self._lock = threading.RLock()
        self._closed = False
        self._db = self._connect()

    def _connect(self) -> psycopg.Connection[NamedRow]:
        try:
            return psycopg.connect(self.conninfo, autocommit=True, row_factory=named_rows)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"store {self.name!r}: cannot connect: {exc}") from exc

    def _connection(self) -> psycopg.Connection[NamedRow]:
        if self._db.broken and not self._closed:
            self._db = self._connect()
        return self._db

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[_PostgresTx]:
        with self._lock:
            db = self._connection()
            db.execute("BEGIN")
            try:
                db.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                yield _PostgresTx(db)
            except psycopg.errors.IntegrityError as exc:
                self._rollback(db)
                raise Conflict(str(exc)) from exc
            except BaseException:
                self._rollback(db)
                raise
            db.execute("COMMIT")

    @staticmethod
    def _rollback(db: psycopg.Connection[NamedRow]) -> None:
        # A broken connection has no transaction left to roll back; the server dropped it.
        if not db.broken:
            db.execute("ROLLBACK")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return _run(self._connection(), sql, params).rows

    def notify(self, channel: str, payload: str) -> None:
        with self._lock:
            # Autocommit: delivered at once (a NOTIFY inside a transaction waits for COMMIT).
            self._connection().execute("SELECT pg_notify(%s, %s)", (channel, payload))
