"""Store queries of what the server knows now: cluster status, revisions seen, hosts' last facts."""

from __future__ import annotations

from typing import Any

from reconciler.server.store.connection import (
    Connection,
    Row,
    as_record,
    from_json,
    optional_bool,
    to_json,
)
from reconciler.server.store.records import (
    ClusterRecord,
    HostFactsRecord,
    RevisionRecord,
    utcnow,
)


class StatusQueries(Connection):
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
                cols["errors_json"] = to_json(value)
            elif key == "drift":
                cols["drift_json"] = None if value is None else to_json(value)
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
    def _cluster(row: Row) -> ClusterRecord:
        return as_record(
            ClusterRecord,
            row,
            in_sync=optional_bool(row["in_sync"]),
            errors=from_json(row["errors_json"]) or [],
            drift=from_json(row["drift_json"]),
        )

    # --- revisions ---------------------------------------------------------------------------

    def record_revision(self, sha: str, *, valid: bool, errors: list[dict[str, Any]]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO revisions (sha, seen_at, valid, errors_json) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sha) DO UPDATE SET valid = excluded.valid, "
                "errors_json = excluded.errors_json",
                (sha, utcnow(), int(valid), to_json(errors)),
            )

    def get_revision(self, sha: str) -> RevisionRecord | None:
        rows = self._query("SELECT * FROM revisions WHERE sha = ?", (sha,))
        if not rows:
            return None
        r = rows[0]
        return as_record(
            RevisionRecord, r, valid=bool(r["valid"]), errors=from_json(r["errors_json"])
        )

    # --- host facts --------------------------------------------------------------------------

    def put_host_facts(self, host: str, digest: str, facts: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO host_facts (host, digest, facts_json, gathered_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (host) DO UPDATE SET digest = excluded.digest, "
                "facts_json = excluded.facts_json, gathered_at = excluded.gathered_at",
                (host, digest, to_json(facts), utcnow()),
            )

    def get_host_facts(self, host: str) -> HostFactsRecord | None:
        rows = self._query("SELECT * FROM host_facts WHERE host = ?", (host,))
        if not rows:
            return None
        r = rows[0]
        return as_record(HostFactsRecord, r, facts=from_json(r["facts_json"]))
