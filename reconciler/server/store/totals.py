"""Store queries that count what the records say, for /metrics: plans by state, runs by
outcome, rollbacks, verification failures, drift reports, the revision in force per cluster.

Counted from the records rather than kept in memory, so a restarted server reports the same
totals and never counts one run twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.server.store.connection import Connection


@dataclass(frozen=True, slots=True)
class Totals:
    plans_by_state: dict[str, int]
    runs_by_state: dict[str, int]
    runs_rolled_back: int  # runs with at least one rolled-back step
    verification_failures: int  # runs whose verification phase failed
    drift_reports: int  # plans made because hosts moved away from the applied revision
    applied_revisions: dict[str, str]  # cluster -> revision in force


class TotalsQueries(Connection):
    def totals(self) -> Totals:
        plans = {str(r[0]): int(r[1]) for r in
                 self._query("SELECT state, COUNT(*) FROM plans GROUP BY state")}  # fmt: skip
        runs = {str(r[0]): int(r[1]) for r in
                self._query("SELECT state, COUNT(*) FROM runs GROUP BY state")}  # fmt: skip
        rolled = self._query(
            "SELECT COUNT(DISTINCT run_id) FROM step_results WHERE rollback = 1"
        )[0][0]
        failed_checks = self._query(
            "SELECT COUNT(*) FROM runs WHERE result_json IS NOT NULL AND "
            + self.dialect.json_is_false("result_json", "verification", "ok")
        )[0][0]
        drift = self._query("SELECT COUNT(*) FROM plans WHERE kind = 'drift'")[0][0]
        applied = {str(r[0]): str(r[1]) for r in self._query(
            "SELECT name, applied_revision FROM clusters WHERE applied_revision IS NOT NULL"
        )}  # fmt: skip
        return Totals(plans, runs, int(rolled), int(failed_checks), int(drift), applied)
