"""Store queries of plans and their approvals; every state change is compare-and-set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from reconciler.plan.steps import Plan
from reconciler.server.store.connection import Conflict, Connection, Row, Tx, as_record, equal_to
from reconciler.server.store.records import (
    ApprovalRecord,
    PlanExists,
    PlanKind,
    PlanRecord,
    PlanState,
    utcnow,
)


class PlanQueries(Connection):
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
        except Conflict as exc:
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
        conditions += equal_to(base_id=base_id)
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
    def _plan(row: Row) -> PlanRecord:
        return as_record(
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
            return decide_tx(db, plan_id, decision, actor, comment, utcnow())

    def approvers_of(self, plan_id: str) -> list[str]:
        """The distinct actors who approved `plan_id`, first approval first."""
        rows = self._query(
            "SELECT actor, MIN(id) AS first FROM approvals WHERE plan_id = ? AND "
            "decision = 'approve' GROUP BY actor ORDER BY first",
            (plan_id,),
        )
        return [str(r["actor"]) for r in rows]

    def add_approval_vote(self, plan_id: str, *, actor: str, comment: str) -> bool:
        """One approval that does not decide the plan yet (it needs more, by others); False
        (nothing written) when the plan is no longer pending."""
        with self._tx() as db:
            pending = db.execute(
                "SELECT 1 FROM plans WHERE id = ? AND state = 'pending'", (plan_id,)
            ).fetchone()
            if pending is None:
                return False
            db.execute(
                "INSERT INTO approvals (plan_id, decision, actor, comment, at) "
                "VALUES (?, 'approve', ?, ?, ?)",
                (plan_id, actor, comment, utcnow()),
            )
        return True

    def approvals_for(self, plan_id: str) -> list[ApprovalRecord]:
        rows = self._query("SELECT * FROM approvals WHERE plan_id = ? ORDER BY id", (plan_id,))
        return [as_record(ApprovalRecord, r) for r in rows]


def decide_tx(
    db: Tx,
    plan_id: str,
    decision: Literal["approve", "reject"],
    actor: str,
    comment: str,
    now: str,
) -> bool:
    """pending -> approved or rejected, and the approval, inside the caller's transaction;
    False (and nothing written) when the plan is not pending."""
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
