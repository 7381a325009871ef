"""Everything the server remembers, in one SQLite file (WAL mode), behind this one module.

The store owns persistence only: cluster status, revisions seen, plans and their lifecycle,
approvals, runs and their per-step results, the backups index, the audit log, API tokens (hashed),
the last facts of every host and the webhook delivery ids already seen. It decides nothing; the
controller does.

Every write is a committed transaction before the call returns, so a killed server loses nothing
it has acknowledged. Plan state changes are compare-and-set (`transition_plan`): two requests
racing to approve the same plan cannot both win.

The methods are synchronous and short (a local SQLite file). One connection is shared under a
lock, so calls are safe from the event loop and from FastAPI's worker threads alike. Moving to
PostgreSQL means reimplementing this module, nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

from reconciler.plan.steps import Plan

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

DB_FILENAME = "shoal.db"

PlanState = Literal[
    "pending",
    "approved",
    "applying",
    "applied",
    "failed",
    "rejected",
    "superseded",
    "stale",
    "interrupted",
]
PLAN_STATES: tuple[PlanState, ...] = get_args(PlanState)
# A plan in one of these states still matters to the controller; the rest are history.
OPEN_PLAN_STATES: tuple[PlanState, ...] = ("pending", "approved", "applying")

PlanKind = Literal["change", "drift", "heal"]
RunState = Literal["applying", "applied", "failed", "interrupted"]
Role = Literal["viewer", "approver", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
ROLE_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}

TOKEN_PREFIX = "shoal"

# Each entry is one migration, applied once, in order, inside a transaction; never edit an
# entry that has shipped: append a new one.
_MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE clusters (
            name TEXT PRIMARY KEY,
            head_revision TEXT,
            planned_revision TEXT,
            applied_revision TEXT,
            last_plan_id TEXT,
            in_sync INTEGER,
            errors_json TEXT NOT NULL DEFAULT '[]',
            errors_revision TEXT,
            drift_json TEXT,
            last_error TEXT,
            checked_at TEXT,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE revisions (
            sha TEXT PRIMARY KEY,
            seen_at TEXT NOT NULL,
            valid INTEGER NOT NULL,
            errors_json TEXT NOT NULL DEFAULT '[]'
        );
        CREATE TABLE plans (
            id TEXT PRIMARY KEY,
            base_id TEXT NOT NULL,
            cluster TEXT NOT NULL,
            revision TEXT NOT NULL,
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            empty INTEGER NOT NULL,
            plan_json TEXT NOT NULL,
            reason TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX plans_cluster_state ON plans (cluster, state);
        CREATE INDEX plans_base ON plans (cluster, base_id);
        CREATE TABLE approvals (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            plan_id TEXT NOT NULL REFERENCES plans (id),
            decision TEXT NOT NULL,
            actor TEXT NOT NULL,
            comment TEXT NOT NULL DEFAULT '',
            at TEXT NOT NULL
        );
        CREATE INDEX approvals_plan ON approvals (plan_id);
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            plan_id TEXT NOT NULL REFERENCES plans (id),
            cluster TEXT NOT NULL,
            state TEXT NOT NULL,
            actor TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            ok INTEGER,
            error TEXT,
            result_json TEXT,
            recovery_json TEXT
        );
        CREATE INDEX runs_state ON runs (state);
        CREATE INDEX runs_plan ON runs (plan_id);
        CREATE TABLE step_results (
            run_id TEXT NOT NULL REFERENCES runs (id),
            seq INTEGER NOT NULL,
            host TEXT NOT NULL,
            step_id TEXT NOT NULL,
            name TEXT NOT NULL,
            result TEXT NOT NULL,
            comment TEXT NOT NULL DEFAULT '',
            changes_json TEXT NOT NULL DEFAULT '{}',
            output TEXT NOT NULL DEFAULT '',
            rollback INTEGER NOT NULL DEFAULT 0,
            at TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        );
        CREATE TABLE backups (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs (id),
            plan_id TEXT NOT NULL,
            host TEXT NOT NULL,
            location TEXT NOT NULL,
            detail_json TEXT NOT NULL DEFAULT '{}',
            at TEXT NOT NULL
        );
        CREATE INDEX backups_run ON backups (run_id);
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            cluster TEXT,
            plan_id TEXT,
            run_id TEXT,
            detail_json TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX audit_cluster ON audit (cluster);
        CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            created_at TEXT NOT NULL,
            revoked_at TEXT
        );
        CREATE TABLE host_facts (
            host TEXT PRIMARY KEY,
            digest TEXT NOT NULL,
            facts_json TEXT NOT NULL,
            gathered_at TEXT NOT NULL
        );
        """,
    ),
    (
        2,
        # Webhook delivery ids already acted on, so a replayed delivery wakes nothing, also
        # after a restart. Bounded by `remember_delivery` (count and age).
        """
        CREATE TABLE webhook_deliveries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            scheme TEXT NOT NULL,
            delivery_id TEXT NOT NULL,
            received_at TEXT NOT NULL,
            UNIQUE (scheme, delivery_id)
        );
        CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);
        """,
    ),
)

SCHEMA_VERSION = _MIGRATIONS[-1][0]

# How many webhook delivery ids are kept, and for how long: a Git host redelivers within
# minutes or by hand within days; past that the poll would have caught up anyway.
DELIVERIES_KEPT = 10_000
DELIVERIES_KEPT_FOR = timedelta(days=7)


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# --- records (what the store hands out; plain values, never live rows) ---------------------------


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    name: str
    head_revision: str | None
    planned_revision: str | None
    applied_revision: str | None
    last_plan_id: str | None
    in_sync: bool | None
    errors: list[dict[str, Any]]
    errors_revision: str | None
    drift: dict[str, Any] | None
    last_error: str | None
    checked_at: str | None
    updated_at: str


@dataclass(frozen=True, slots=True)
class RevisionRecord:
    sha: str
    seen_at: str
    valid: bool
    errors: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class PlanRecord:
    id: str
    base_id: str
    cluster: str
    revision: str
    kind: PlanKind
    state: PlanState
    empty: bool
    plan: Plan
    reason: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    plan_id: str
    decision: Literal["approve", "reject"]
    actor: str
    comment: str
    at: str


@dataclass(frozen=True, slots=True)
class StepResultRecord:
    seq: int
    host: str
    step_id: str
    name: str
    result: str  # "ok" | "changed" | "failed" | "skipped" | "rolled_back" ...
    comment: str = ""
    changes: dict[str, Any] | None = None
    output: str = ""
    rollback: bool = False
    at: str = ""


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    plan_id: str
    cluster: str
    state: RunState
    actor: str
    started_at: str
    finished_at: str | None
    ok: bool | None
    error: str | None
    result: dict[str, Any] | None
    recovery: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class BackupRecord:
    run_id: str
    plan_id: str
    host: str
    location: str
    detail: dict[str, Any]
    at: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: str
    actor: str
    action: str
    cluster: str | None
    plan_id: str | None
    run_id: str | None
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    name: str
    role: Role
    created_at: str
    revoked_at: str | None

    @property
    def actor(self) -> str:
        return f"token:{self.name}"


@dataclass(frozen=True, slots=True)
class HostFactsRecord:
    host: str
    digest: str
    facts: dict[str, Any]
    gathered_at: str


class PlanExists(Exception):
    """A plan with this id is already stored."""


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


_R = TypeVar("_R", bound="DataclassInstance")


def _record(cls: type[_R], row: sqlite3.Row, **stored_otherwise: Any) -> _R:
    """`cls` from a row whose columns carry its field names.

    `stored_otherwise` gives the fields the row keeps in another form (JSON text, 0/1), already
    decoded; columns the record does not name (a token's hash) are left behind.
    """
    plain = {f.name: row[f.name] for f in fields(cls) if f.name not in stored_otherwise}
    return cls(**plain, **stored_otherwise)


def _equal(**columns: Any) -> list[tuple[str, tuple[Any, ...]]]:
    """`column = ?` conditions for `Store._select`, one per filter that was given (not None)."""
    return [(f"{name} = ?", (value,)) for name, value in columns.items() if value is not None]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """The SQLite store. Open with `Store.open(state_dir)`; close with `close()`."""

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
        self._migrate()

    @classmethod
    def open(cls, state_dir: Path) -> Store:
        return cls(state_dir / DB_FILENAME)

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

    # --- schema ------------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._tx() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
            for version, sql in _MIGRATIONS:
                if version in done:
                    continue
                # executescript would COMMIT our transaction; run the statements one by one.
                for statement in sql.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, utcnow()),
                )

    def schema_version(self) -> int:
        rows = self._query("SELECT MAX(version) FROM schema_migrations")
        return int(rows[0][0] or 0)

    def ping(self) -> bool:
        return bool(self._query("SELECT 1")[0][0] == 1)

    # --- clusters ----------------------------------------------------------------------------

    _CLUSTER_FIELDS = frozenset(
        {
            "head_revision",
            "planned_revision",
            "applied_revision",
            "last_plan_id",
            "in_sync",
            "errors",
            "errors_revision",
            "drift",
            "last_error",
            "checked_at",
        }
    )

    def update_cluster(self, name: str, **fields: Any) -> None:
        """Create the cluster's row if needed and set the given fields."""
        unknown = set(fields) - self._CLUSTER_FIELDS
        if unknown:
            raise ValueError(f"unknown cluster fields: {sorted(unknown)}")
        cols: dict[str, Any] = {}
        for key, value in fields.items():
            if key == "errors":
                cols["errors_json"] = _dumps(value)
            elif key == "drift":
                cols["drift_json"] = None if value is None else _dumps(value)
            elif key == "in_sync":
                cols["in_sync"] = None if value is None else int(bool(value))
            else:
                cols[key] = value
        cols["updated_at"] = utcnow()
        with self._tx() as db:
            db.execute(
                "INSERT INTO clusters (name, updated_at) VALUES (?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, cols["updated_at"]),
            )
            assignments = ", ".join(f"{c} = ?" for c in cols)
            db.execute(
                f"UPDATE clusters SET {assignments} WHERE name = ?",
                (*cols.values(), name),
            )

    def get_cluster(self, name: str) -> ClusterRecord | None:
        rows = self._query("SELECT * FROM clusters WHERE name = ?", (name,))
        return self._cluster(rows[0]) if rows else None

    def list_clusters(self) -> list[ClusterRecord]:
        return [self._cluster(r) for r in self._query("SELECT * FROM clusters ORDER BY name")]

    @staticmethod
    def _cluster(row: sqlite3.Row) -> ClusterRecord:
        return _record(
            ClusterRecord,
            row,
            in_sync=_bool(row["in_sync"]),
            errors=_loads(row["errors_json"]) or [],
            drift=_loads(row["drift_json"]),
        )

    # --- revisions ---------------------------------------------------------------------------

    def record_revision(self, sha: str, *, valid: bool, errors: list[dict[str, Any]]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO revisions (sha, seen_at, valid, errors_json) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sha) DO UPDATE SET valid = excluded.valid, "
                "errors_json = excluded.errors_json",
                (sha, utcnow(), int(valid), _dumps(errors)),
            )

    def get_revision(self, sha: str) -> RevisionRecord | None:
        rows = self._query("SELECT * FROM revisions WHERE sha = ?", (sha,))
        if not rows:
            return None
        r = rows[0]
        return _record(RevisionRecord, r, valid=bool(r["valid"]), errors=_loads(r["errors_json"]))

    # --- plans -------------------------------------------------------------------------------

    def add_plan(
        self,
        plan: Plan,
        *,
        cluster: str,
        kind: PlanKind,
        base_id: str | None = None,
        state: PlanState = "pending",
        reason: str | None = None,
    ) -> PlanRecord:
        """Store a plan; `plan.id` is its key. Raises PlanExists when the id is taken."""
        now = utcnow()
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO plans (id, base_id, cluster, revision, kind, state, empty, "
                    "plan_json, reason, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        plan.id,
                        base_id or plan.id,
                        cluster,
                        plan.revision,
                        kind,
                        state,
                        int(plan.empty),
                        plan.model_dump_json(),
                        reason,
                        now,
                        now,
                    ),
                )
        except sqlite3.IntegrityError as exc:
            raise PlanExists(plan.id) from exc
        record = self.get_plan(plan.id)
        assert record is not None
        return record

    def get_plan(self, plan_id: str) -> PlanRecord | None:
        rows = self._query("SELECT * FROM plans WHERE id = ?", (plan_id,))
        return self._plan(rows[0]) if rows else None

    def list_plans(
        self,
        *,
        cluster: str | None = None,
        states: Sequence[str] | None = None,
        base_id: str | None = None,
        limit: int = 100,
    ) -> list[PlanRecord]:
        conditions: list[tuple[str, Sequence[Any]]] = []
        if cluster is not None:
            # A plan covers a unit of clusters ("a,b"); match membership, not equality.
            conditions.append(("instr(',' || cluster || ',', ',' || ? || ',') > 0", (cluster,)))
        if states:
            conditions.append((f"state IN ({', '.join('?' for _ in states)})", tuple(states)))
        conditions += _equal(base_id=base_id)
        rows = self._select(
            "plans", conditions, order_by="created_at DESC, rowid DESC", limit=limit
        )
        return [self._plan(r) for r in rows]

    def transition_plan(
        self,
        plan_id: str,
        from_states: Sequence[PlanState],
        to_state: PlanState,
        *,
        reason: str | None = None,
    ) -> bool:
        """Move a plan to `to_state` only if it is in one of `from_states` (compare-and-set)."""
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE plans SET state = ?, reason = COALESCE(?, reason), updated_at = ? "
                f"WHERE id = ? AND state IN ({', '.join('?' for _ in from_states)})",
                (to_state, reason, utcnow(), plan_id, *from_states),
            )
            return cur.rowcount == 1

    @staticmethod
    def _plan(row: sqlite3.Row) -> PlanRecord:
        return _record(
            PlanRecord,
            row,
            empty=bool(row["empty"]),
            plan=Plan.model_validate_json(row["plan_json"]),
        )

    # --- approvals ---------------------------------------------------------------------------

    def decide_plan(
        self,
        plan_id: str,
        *,
        decision: Literal["approve", "reject"],
        actor: str,
        comment: str,
    ) -> bool:
        """Approve or reject a pending plan; returns False (and records nothing) otherwise."""
        with self._tx() as db:
            return self._decide_tx(db, plan_id, decision, actor, comment, utcnow())

    @staticmethod
    def _decide_tx(
        db: sqlite3.Connection,
        plan_id: str,
        decision: Literal["approve", "reject"],
        actor: str,
        comment: str,
        now: str,
    ) -> bool:
        to_state: PlanState = "approved" if decision == "approve" else "rejected"
        cur = db.execute(
            "UPDATE plans SET state = ?, updated_at = ? WHERE id = ? AND state = 'pending'",
            (to_state, now, plan_id),
        )
        if cur.rowcount != 1:
            return False
        db.execute(
            "INSERT INTO approvals (plan_id, decision, actor, comment, at) VALUES (?, ?, ?, ?, ?)",
            (plan_id, decision, actor, comment, now),
        )
        return True

    def approve_and_start_run(
        self, plan_id: str, *, actor: str, comment: str
    ) -> RunRecord | None:
        """pending -> approved (recorded) -> applying with a new run, in ONE transaction.

        A crash can therefore never leave a plan approved without its run: either nothing
        happened, or the run exists and crash recovery finds it.
        """
        run_id = uuid.uuid4().hex[:16]
        now = utcnow()
        with self._tx() as db:
            if not self._decide_tx(db, plan_id, "approve", actor, comment, now):
                return None
            self._start_run_tx(db, plan_id, run_id, actor, now)
        run = self.get_run(run_id)
        assert run is not None
        return run

    def approvals_for(self, plan_id: str) -> list[ApprovalRecord]:
        rows = self._query(
            "SELECT * FROM approvals WHERE plan_id = ? ORDER BY id", (plan_id,)
        )
        return [_record(ApprovalRecord, r) for r in rows]

    # --- runs --------------------------------------------------------------------------------

    def start_run(self, plan_id: str, *, actor: str) -> RunRecord | None:
        """approved -> applying and a new run, in one transaction; None if not approved."""
        run_id = uuid.uuid4().hex[:16]
        now = utcnow()
        with self._tx() as db:
            if not self._start_run_tx(db, plan_id, run_id, actor, now):
                return None
        run = self.get_run(run_id)
        assert run is not None
        return run

    @staticmethod
    def _start_run_tx(
        db: sqlite3.Connection, plan_id: str, run_id: str, actor: str, now: str
    ) -> bool:
        cur = db.execute(
            "UPDATE plans SET state = 'applying', updated_at = ? "
            "WHERE id = ? AND state = 'approved'",
            (now, plan_id),
        )
        if cur.rowcount != 1:
            return False
        cluster = db.execute("SELECT cluster FROM plans WHERE id = ?", (plan_id,)).fetchone()[0]
        db.execute(
            "INSERT INTO runs (id, plan_id, cluster, state, actor, started_at) "
            "VALUES (?, ?, ?, 'applying', ?, ?)",
            (run_id, plan_id, cluster, actor, now),
        )
        return True

    def add_step_results(self, run_id: str, results: Sequence[StepResultRecord]) -> None:
        with self._tx() as db:
            for r in results:
                db.execute(
                    "INSERT OR REPLACE INTO step_results (run_id, seq, host, step_id, name, "
                    "result, comment, changes_json, output, rollback, at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        r.seq,
                        r.host,
                        r.step_id,
                        r.name,
                        r.result,
                        r.comment,
                        _dumps(r.changes or {}),
                        r.output,
                        int(r.rollback),
                        r.at or utcnow(),
                    ),
                )

    def finish_run(
        self,
        run_id: str,
        *,
        ok: bool,
        plan_state: PlanState,
        run_state: RunState,
        result: dict[str, Any] | None,
        error: str | None = None,
        recovery: dict[str, Any] | None = None,
    ) -> None:
        """Close a run and move its plan out of `applying`, in one transaction."""
        now = utcnow()
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET state = ?, finished_at = ?, ok = ?, error = ?, "
                "result_json = COALESCE(?, result_json), recovery_json = ? WHERE id = ?",
                (
                    run_state,
                    now,
                    int(ok),
                    error,
                    None if result is None else _dumps(result),
                    None if recovery is None else _dumps(recovery),
                    run_id,
                ),
            )
            db.execute(
                "UPDATE plans SET state = ?, updated_at = ? "
                "WHERE id = (SELECT plan_id FROM runs WHERE id = ?) AND state = 'applying'",
                (plan_state, now, run_id),
            )

    def get_run(self, run_id: str) -> RunRecord | None:
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        return self._run(rows[0]) if rows else None

    def list_runs(
        self, *, state: str | None = None, plan_id: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        rows = self._select(
            "runs",
            _equal(state=state, plan_id=plan_id),
            order_by="started_at DESC, rowid DESC",
            limit=limit,
        )
        return [self._run(r) for r in rows]

    def step_results(self, run_id: str) -> list[StepResultRecord]:
        rows = self._query("SELECT * FROM step_results WHERE run_id = ? ORDER BY seq", (run_id,))
        return [
            _record(
                StepResultRecord,
                r,
                changes=_loads(r["changes_json"]),
                rollback=bool(r["rollback"]),
            )
            for r in rows
        ]

    @staticmethod
    def _run(row: sqlite3.Row) -> RunRecord:
        return _record(
            RunRecord,
            row,
            ok=_bool(row["ok"]),
            result=_loads(row["result_json"]),
            recovery=_loads(row["recovery_json"]),
        )

    # --- backups -----------------------------------------------------------------------------

    def add_backup(
        self, run_id: str, plan_id: str, host: str, location: str, detail: dict[str, Any]
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO backups (run_id, plan_id, host, location, detail_json, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, plan_id, host, location, _dumps(detail), utcnow()),
            )

    def backups(
        self, *, run_id: str | None = None, plan_id: str | None = None
    ) -> list[BackupRecord]:
        if run_id is not None:
            rows = self._query("SELECT * FROM backups WHERE run_id = ? ORDER BY id", (run_id,))
        else:
            rows = self._query("SELECT * FROM backups WHERE plan_id = ? ORDER BY id", (plan_id,))
        return [_record(BackupRecord, r, detail=_loads(r["detail_json"])) for r in rows]

    # --- audit -------------------------------------------------------------------------------

    def audit(
        self,
        action: str,
        *,
        actor: str,
        cluster: str | None = None,
        plan_id: str | None = None,
        run_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO audit (at, actor, action, cluster, plan_id, run_id, detail_json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (utcnow(), actor, action, cluster, plan_id, run_id, _dumps(detail or {})),
            )
            return int(cur.lastrowid or 0)

    def list_audit(
        self,
        *,
        cluster: str | None = None,
        action: str | None = None,
        after_id: int = 0,
        limit: int = 200,
    ) -> list[AuditRecord]:
        rows = self._select(
            "audit",
            [("id > ?", (after_id,)), *_equal(cluster=cluster, action=action)],
            order_by="id DESC",
            limit=limit,
        )
        return [_record(AuditRecord, r, detail=_loads(r["detail_json"])) for r in rows]

    # --- webhook deliveries ------------------------------------------------------------------

    def remember_delivery(
        self,
        scheme: str,
        delivery_id: str,
        *,
        now: datetime | None = None,
        keep: int = DELIVERIES_KEPT,
        keep_for: timedelta = DELIVERIES_KEPT_FOR,
    ) -> bool:
        """Record a webhook delivery; False if (scheme, delivery_id) was recorded already.

        Ids older than `keep_for` are forgotten before the check (an old replay counts as new),
        and all but the newest `keep` after it, in the same transaction: the table stays
        bounded, and two racing replays of one delivery cannot both be new.
        """
        at = now or datetime.now(UTC)
        cutoff = (at - keep_for).isoformat(timespec="milliseconds")
        with self._tx() as db:
            db.execute("DELETE FROM webhook_deliveries WHERE received_at < ?", (cutoff,))
            cur = db.execute(
                "INSERT INTO webhook_deliveries (scheme, delivery_id, received_at) "
                "VALUES (?, ?, ?) ON CONFLICT (scheme, delivery_id) DO NOTHING",
                (scheme, delivery_id, at.isoformat(timespec="milliseconds")),
            )
            new = cur.rowcount == 1
            # AUTOINCREMENT ids only grow, so the newest `keep` are the largest ids.
            db.execute(
                "DELETE FROM webhook_deliveries "
                "WHERE id <= (SELECT MAX(id) FROM webhook_deliveries) - ?",
                (keep,),
            )
            return new

    def delivery_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM webhook_deliveries")[0][0])

    # --- tokens ------------------------------------------------------------------------------

    def create_token(self, role: Role, name: str = "") -> tuple[TokenRecord, str]:
        """Make a token; returns its record and the token text, which is never stored."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        token_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
        now = utcnow()
        with self._tx() as db:
            db.execute(
                "INSERT INTO tokens (id, name, role, sha256, created_at) VALUES (?, ?, ?, ?, ?)",
                (token_id, name or token_id, role, hash_token(token), now),
            )
        return TokenRecord(token_id, name or token_id, role, now, None), token

    def authenticate(self, token: str) -> TokenRecord | None:
        """The token's record if `token` is valid and not revoked."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            return None
        rows = self._query("SELECT * FROM tokens WHERE id = ?", (parts[1],))
        # Compare even when the id is unknown, so timing does not tell which ids exist.
        stored = rows[0]["sha256"] if rows else "0" * 64
        if not hmac.compare_digest(stored, hash_token(token)) or not rows:
            return None
        r = rows[0]
        if r["revoked_at"] is not None:
            return None
        return _record(TokenRecord, r)

    def revoke_token(self, token_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (utcnow(), token_id),
            )
            return cur.rowcount == 1

    def list_tokens(self) -> list[TokenRecord]:
        rows = self._query("SELECT * FROM tokens ORDER BY created_at")
        return [_record(TokenRecord, r) for r in rows]

    # --- host facts --------------------------------------------------------------------------

    def put_host_facts(self, host: str, digest: str, facts: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO host_facts (host, digest, facts_json, gathered_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (host) DO UPDATE SET digest = excluded.digest, "
                "facts_json = excluded.facts_json, gathered_at = excluded.gathered_at",
                (host, digest, _dumps(facts), utcnow()),
            )

    def get_host_facts(self, host: str) -> HostFactsRecord | None:
        rows = self._query("SELECT * FROM host_facts WHERE host = ?", (host,))
        if not rows:
            return None
        r = rows[0]
        return _record(HostFactsRecord, r, facts=_loads(r["facts_json"]))
