"""The store's one SQLite connection: opening it, transactions, reads, and the column codecs.

Every write is a committed transaction before the call returns, so a killed server loses nothing
it has acknowledged. One connection is shared under a lock, so calls are safe from the event
loop and from FastAPI's worker threads alike. The query modules of this package build on
`Connection`; none opens a connection of its own.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def optional_bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


_R = TypeVar("_R", bound="DataclassInstance")


def as_record(cls: type[_R], row: sqlite3.Row, **stored_otherwise: Any) -> _R:
    """`cls` from a row whose columns carry its field names.

    `stored_otherwise` gives the fields the row keeps in another form (JSON text, 0/1), already
    decoded; columns the record does not name (a token's hash) are left behind.
    """
    plain = {f.name: row[f.name] for f in fields(cls) if f.name not in stored_otherwise}
    return cls(**plain, **stored_otherwise)


def equal_to(**columns: Any) -> list[tuple[str, tuple[Any, ...]]]:
    """`column = ?` conditions for `Connection._select`, one per filter given (not None)."""
    return [(f"{name} = ?", (value,)) for name, value in columns.items() if value is not None]


class Connection:
    """An open SQLite file in WAL mode, with one transaction per call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so each method is exactly one
        # transaction and nothing waits half-written in an implicit one.
        self._db = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit survives power loss too, not only a killed process; writes are rare.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, params).fetchall())

    def _select(
        self,
        table: str,
        conditions: Sequence[tuple[str, Sequence[Any]]],
        *,
        order_by: str,
        limit: int,
    ) -> list[sqlite3.Row]:
        """Rows of `table` meeting every (clause, params) condition, in order, at most `limit`."""
        sql = f"SELECT * FROM {table}"
        if conditions:
            sql += " WHERE " + " AND ".join(clause for clause, _ in conditions)
        sql += f" ORDER BY {order_by} LIMIT ?"
        params = [param for _, clause_params in conditions for param in clause_params]
        return self._query(sql, [*params, limit])
