"""Errors of the plan lifecycle that the API turns into HTTP statuses.

They live apart from `reconciler.server.controller` so that the API (and its tests) can name them
without importing the whole engine. They extend the one error tree in `reconciler.errors`.
"""

from __future__ import annotations

from reconciler.errors import ShoalError, StalePlan, Waiting


class PlanNotFound(ShoalError):
    """No plan has this id (HTTP 404)."""

    def __init__(self, plan_id: str) -> None:
        self.plan_id = plan_id
        super().__init__(f"no plan {plan_id}")


class PlanNotPending(Waiting):
    """Only a pending plan can be approved or rejected (HTTP 409)."""

    def __init__(self, plan_id: str, state: str) -> None:
        self.plan_id = plan_id
        self.state = state
        super().__init__(f"plan {plan_id} is {state}, not pending")


class StaleApproval(StalePlan):
    """An approval came for a plan that no longer matches git or the hosts (HTTP 409).

    The plan is marked stale (or superseded) and, when the hosts moved, a new plan is made at
    once; `new_plan_id` names it.
    """

    def __init__(
        self, plan_id: str, hosts: list[str], reason: str, new_plan_id: str | None
    ) -> None:
        super().__init__(plan_id, hosts)
        self.reason = reason
        self.new_plan_id = new_plan_id
        self.args = (f"plan {plan_id} is stale: {reason}",)
