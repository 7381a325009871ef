"""The SQL schema of the store, as the ordered list of migrations, and how they are applied.

Existing state directories must keep opening: an entry that has shipped is never edited.
"""

from __future__ import annotations

import sqlite3

from reconciler.server.store.records import utcnow

# Each entry is one migration, applied once, in order, inside a transaction; never edit an
# entry that has shipped: append a new one.
MIGRATIONS: tuple[tuple[int, str], ...] = (
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
    (
        3,
        # Web sign-in sessions: a token exchanged for a cookie. Only the hash of the cookie's
        # secret is kept, like a token's; the CSRF token rides with the session it protects.
        """
        CREATE TABLE web_sessions (
            id TEXT PRIMARY KEY,
            token_id TEXT NOT NULL REFERENCES tokens (id),
            csrf TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        );
        CREATE INDEX web_sessions_expires ON web_sessions (expires_at);
        CREATE INDEX audit_actor ON audit (actor);
        CREATE INDEX audit_plan ON audit (plan_id);
        """,
    ),
    (
        4,
        # An admin's lock on a cluster: while it is there, nothing of the cluster applies.
        """
        CREATE TABLE cluster_locks (
            cluster TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            actor TEXT NOT NULL,
            locked_at TEXT NOT NULL
        );
        """,
    ),
    (
        5,
        # An admin's override of the config repo's freeze windows, for one plan.
        """
        CREATE TABLE freeze_overrides (
            plan_id TEXT PRIMARY KEY REFERENCES plans (id),
            reason TEXT NOT NULL,
            actor TEXT NOT NULL,
            at TEXT NOT NULL
        );
        """,
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(db: sqlite3.Connection) -> None:
    """Apply the migrations `db` lacks, in order, inside the caller's transaction."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
    )
    done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
    for version, sql in MIGRATIONS:
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
