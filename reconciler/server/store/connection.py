"""The store's one database connection, as the query modules see it, and the column codecs.

`Engine` is the interface the two implementations share: `sqlite_engine.SQLiteEngine` (one file,
the default) and `postgres_engine.PostgresEngine` (a PostgreSQL database several servers share).
Each holds one connection under a lock, so calls are safe from the event loop and from
FastAPI's worker threads alike; each `transaction()` is one committed transaction before it
returns, so a killed server loses nothing it has acknowledged. The query modules of this package
build on `Connection` and write SQLite's SQL, which the engine's `dialect` translates.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from reconciler.server.store.dialect import Dialect

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class Row(Protocol):
    """A result row, read by column position or by column name."""

    def __getitem__(self, key: int | str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Result:
    """What one statement did: rows changed (or -1), and the rows it returned, all read."""

    rowcount: int
    rows: list[Row]

    def fetchone(self) -> Row | None:
        return self.rows[0] if self.rows else None

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)


class Tx(Protocol):
    """An open transaction: statements in SQLite's SQL, translated by the engine."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result: ...


class Conflict(Exception):
    """A write broke a unique or foreign key constraint; the transaction was rolled back."""


class StoreUnavailable(Exception):
    """The store's database cannot be reached (the message names it, without a password)."""


class Engine(ABC):
    """One connection to the store's database; see the module docstring."""

    dialect: Dialect

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Tx]:
        """One transaction: committed when the block ends, rolled back if it raises (a
        constraint broken raises `Conflict`). Writers are serialized, as SQLite does."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of one read, outside any transaction of the caller's."""

    @abstractmethod
    def close(self) -> None: ...

    def notify(self, channel: str, payload: str) -> None:
        """Tell the other servers on this database (PostgreSQL's NOTIFY); a store of one
        server has nobody to tell."""
        return None


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def to_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def optional_bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


_R = TypeVar("_R", bound="DataclassInstance")


def as_record(cls: type[_R], row: Row, **stored_otherwise: Any) -> _R:
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
    """The query modules' base: transactions and reads on the store's engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def dialect(self) -> Dialect:
        return self.engine.dialect

    def close(self) -> None:
        self.engine.close()

    def _tx(self) -> AbstractContextManager[Tx]:
        return self.engine.transaction()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self.engine.query(sql, params)

    def _select(
        self,
        table: str,
        conditions: Sequence[tuple[str, Sequence[Any]]],
        *,
        order_by: str,
        limit: int,
    ) -> list[Row]:
        """Rows of `table` meeting every (clause, params) condition, in order, at most `limit`."""
        sql = f"SELECT * FROM {table}"
        if conditions:
            sql += " WHERE " + " AND ".join(clause for clause, _ in conditions)
        sql += f" ORDER BY {order_by} LIMIT ?"
        params = [param for _, clause_params in conditions for param in clause_params]
        return self._query(sql, [*params, limit])
