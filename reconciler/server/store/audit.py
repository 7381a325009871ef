"""Store queries of the audit log and of the webhook deliveries already acted on."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.server.store.connection import Connection, as_record, equal_to, from_json, to_json
from reconciler.server.store.records import AuditRecord, utcnow

# How many webhook delivery ids are kept, and for how long: a Git host redelivers within
# minutes or by hand within days; past that the poll would have caught up anyway.
DELIVERIES_KEPT = 10_000
DELIVERIES_KEPT_FOR = timedelta(days=7)


class AuditQueries(Connection):
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
                "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (utcnow(), actor, action, cluster, plan_id, run_id, to_json(detail or {})),
            )
            row = cur.fetchone()
            assert row is not None  # RETURNING of the row just inserted
            return int(row[0])

    def list_audit(
        self,
        *,
        cluster: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        plan_id: str | None = None,
        since: str | None = None,
        until: str | None = None,
        after_id: int = 0,
        limit: int = 200,
    ) -> list[AuditRecord]:
        """Newest first. `since`/`until`: ISO timestamps (or dates), `since` <= at < `until`."""
        conditions: list[tuple[str, Sequence[Any]]] = [
            ("id > ?", (after_id,)),
            *equal_to(cluster=cluster, action=action, actor=actor, plan_id=plan_id),
        ]
        if since is not None:
            conditions.append(("at >= ?", (since,)))
        if until is not None:
            conditions.append(("at < ?", (until,)))
        rows = self._select("audit", conditions, order_by="id DESC", limit=limit)
        return [as_record(AuditRecord, r, detail=from_json(r["detail_json"])) for r in rows]

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
