"""Store queries of an admin's freeze overrides: one plan may start although a freeze window
of the config repo forbids applies now (an urgent fix). A lock still holds it."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.server.store.connection import Connection
from reconciler.server.store.records import utcnow


@dataclass(frozen=True, slots=True)
class FreezeOverride:
    plan_id: str
    reason: str
    actor: str
    at: str


class FreezeOverrideQueries(Connection):
    def override_freeze(self, plan_id: str, *, reason: str, actor: str) -> FreezeOverride | None:
        """Let `plan_id` start during a freeze; None if it was overridden already."""
        now = utcnow()
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO freeze_overrides (plan_id, reason, actor, at) "
                "VALUES (?, ?, ?, ?)",
                (plan_id, reason, actor, now),
            )
            if cur.rowcount != 1:
                return None
        return FreezeOverride(plan_id, reason, actor, now)

    def freeze_override(self, plan_id: str) -> FreezeOverride | None:
        rows = self._query("SELECT * FROM freeze_overrides WHERE plan_id = ?", (plan_id,))
        if not rows:
            return None
        r = rows[0]
        return FreezeOverride(r["plan_id"], r["reason"], r["actor"], r["at"])
