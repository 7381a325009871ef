"""Store queries of runs: starting one (with its approval), step results, finishing, backups.

`fence`: the owner epochs the writer runs under, on a store several servers share
(`owners`); a run records the fence it was started under, and each later write of it must
bring that same fence, still current, or it is refused (FencedOut) and nothing is written.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from reconciler.server.store.connection import (
    Connection,
    Row,
    Tx,
    as_record,
    equal_to,
    from_json,
    optional_bool,
    to_json,
)
from reconciler.server.store.owners import Fence, fence_current_tx, run_fence_tx
from reconciler.server.store.plans import decide_tx
from reconciler.server.store.records import (
    BackupRecord,
    PlanState,
    RunRecord,
    RunState,
    StepResultRecord,
    utcnow,
)


class RunQueries(Connection):
    # --- runs --------------------------------------------------------------------------------

    def approve_and_start_run(
        self, plan_id: str, *, actor: str, comment: str, fence: Fence | None = None
    ) -> RunRecord | None:
        """pending -> approved (recorded) -> applying with a new run, in ONE transaction.

        A crash can therefore never leave a plan approved without its run: either nothing
        happened, or the run exists and crash recovery finds it.
        """
        run_id = uuid.uuid4().hex[:16]
        now = utcnow()
        with self._tx() as db:
            fence_current_tx(db, fence, None)
            if not decide_tx(db, plan_id, "approve", actor, comment, now):
                return None
            self._start_run_tx(db, plan_id, run_id, actor, now, fence)
        run = self.get_run(run_id)
        assert run is not None
        return run

    def start_run(
        self, plan_id: str, *, actor: str, fence: Fence | None = None
    ) -> RunRecord | None:
        """approved -> applying and a new run, in one transaction; None if not approved."""
        run_id = uuid.uuid4().hex[:16]
        now = utcnow()
        with self._tx() as db:
            fence_current_tx(db, fence, None)
            if not self._start_run_tx(db, plan_id, run_id, actor, now, fence):
                return None
        run = self.get_run(run_id)
        assert run is not None
        return run

    @staticmethod
    def _start_run_tx(
        db: Tx, plan_id: str, run_id: str, actor: str, now: str, fence: Fence | None
    ) -> bool:
        cur = db.execute(
            "UPDATE plans SET state = 'applying', updated_at = ? "
            "WHERE id = ? AND state = 'approved'",
            (now, plan_id),
        )
        if cur.rowcount != 1:
            return False
        row = db.execute("SELECT cluster FROM plans WHERE id = ?", (plan_id,)).fetchone()
        assert row is not None  # the UPDATE above found it, in this transaction
        cluster = row[0]
        db.execute(
            "INSERT INTO runs (id, plan_id, cluster, state, actor, started_at, fence_json) "
            "VALUES (?, ?, ?, 'applying', ?, ?, ?)",
            (run_id, plan_id, cluster, actor, now, None if fence is None else to_json(dict(fence))),
        )
        return True

    def add_step_results(
        self,
        run_id: str,
        results: Sequence[StepResultRecord],
        *,
        replace: bool = False,
        fence: Fence | None = None,
    ) -> None:
        """Add step rows; `replace`: the run's final rows, which take the place of those
        written live while it ran (numbered as they came), in one transaction."""
        with self._tx() as db:
            run_fence_tx(db, run_id, fence)
            if replace:
                db.execute("DELETE FROM step_results WHERE run_id = ?", (run_id,))
            for r in results:
                db.execute(
                    "INSERT INTO step_results (run_id, seq, host, step_id, name, "
                    "result, comment, changes_json, output, rollback, at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (run_id, seq) DO UPDATE SET host = excluded.host, "
                    "step_id = excluded.step_id, name = excluded.name, "
                    "result = excluded.result, comment = excluded.comment, "
                    "changes_json = excluded.changes_json, output = excluded.output, "
                    "rollback = excluded.rollback, at = excluded.at",
                    (
                        run_id,
                        r.seq,
                        r.host,
                        r.step_id,
                        r.name,
                        r.result,
                        r.comment,
                        to_json(r.changes or {}),
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
        fence: Fence | None = None,
    ) -> None:
        """Close a run and move its plan out of `applying`, in one transaction."""
        now = utcnow()
        with self._tx() as db:
            run_fence_tx(db, run_id, fence)
            db.execute(
                "UPDATE runs SET state = ?, finished_at = ?, ok = ?, error = ?, "
                "result_json = COALESCE(?, result_json), recovery_json = ? WHERE id = ?",
                (
                    run_state,
                    now,
                    int(ok),
                    error,
                    None if result is None else to_json(result),
                    None if recovery is None else to_json(recovery),
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
        self,
        *,
        state: str | None = None,
        plan_id: str | None = None,
        cluster: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        conditions: list[tuple[str, Sequence[Any]]] = [*equal_to(state=state, plan_id=plan_id)]
        if cluster is not None:
            # A run covers a unit of clusters ("a,b"), like its plan: match membership.
            conditions.append(("instr(',' || cluster || ',', ',' || ? || ',') > 0", (cluster,)))
        rows = self._select("runs", conditions, order_by="started_at DESC, rowid DESC", limit=limit)
        return [self._run(r) for r in rows]

    def step_results(self, run_id: str) -> list[StepResultRecord]:
        rows = self._query("SELECT * FROM step_results WHERE run_id = ? ORDER BY seq", (run_id,))
        return [
            as_record(
                StepResultRecord,
                r,
                changes=from_json(r["changes_json"]),
                rollback=bool(r["rollback"]),
            )
            for r in rows
        ]

    @staticmethod
    def _run(row: Row) -> RunRecord:
        return as_record(
            RunRecord,
            row,
            ok=optional_bool(row["ok"]),
            result=from_json(row["result_json"]),
            recovery=from_json(row["recovery_json"]),
            fence=from_json(row["fence_json"]),
        )

    # --- backups -----------------------------------------------------------------------------

    def add_backup(
        self,
        run_id: str,
        plan_id: str,
        host: str,
        location: str,
        detail: dict[str, Any],
        *,
        fence: Fence | None = None,
    ) -> None:
        with self._tx() as db:
            run_fence_tx(db, run_id, fence)
            db.execute(
                "INSERT INTO backups (run_id, plan_id, host, location, detail_json, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, plan_id, host, location, to_json(detail), utcnow()),
            )

    def backups(
        self, *, run_id: str | None = None, plan_id: str | None = None
    ) -> list[BackupRecord]:
        if run_id is not None:
            rows = self._query("SELECT * FROM backups WHERE run_id = ? ORDER BY id", (run_id,))
        else:
            rows = self._query("SELECT * FROM backups WHERE plan_id = ? ORDER BY id", (plan_id,))
        return [as_record(BackupRecord, r, detail=from_json(r["detail_json"])) for r in rows]
