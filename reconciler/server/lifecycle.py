"""Errors of the plan lifecycle that the API turns into HTTP statuses.

They live apart from `reconciler.server.controller` so that the API (and its tests) can name them
without importing the whole engine. They extend the one error tree in `reconciler.errors`.
"""

from __future__ import annotations

from datetime import datetime

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


class AlreadyApproved(Waiting):
    """The same token approved this plan before; it needs approvals by different tokens
    (HTTP 409)."""

    def __init__(self, plan_id: str, actor: str, required: int) -> None:
        self.plan_id = plan_id
        self.actor = actor
        self.required = required
        super().__init__(f"{actor} already approved plan {plan_id}; it needs {required} "
                         "approvals by different tokens")


class AlreadyOverridden(Waiting):
    """An admin overrode the freeze for this plan before (HTTP 409)."""

    def __init__(self, plan_id: str) -> None:
        self.plan_id = plan_id
        super().__init__(f"the freeze is overridden for plan {plan_id} already")


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


class ApprovalRecorded:
    """An approval that counted but did not start the run: the plan needs more approvals
    (`waiting` None), or it is approved and waits for what `waiting` names (a lock, a freeze
    window that ends at `until`)."""

    def __init__(
        self,
        plan_id: str,
        approvers: list[str],
        required: int,
        waiting: str | None = None,
        until: datetime | None = None,
    ) -> None:
        self.plan_id = plan_id
        self.approvers = approvers
        self.required = required
        self.waiting = waiting
        self.until = until
