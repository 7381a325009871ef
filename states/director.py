"""`director.skipped`: a reason the director compiler could not plan something, as a skip.

The compiler says so when a ledger, an IPVS table or a MAC it needs is unknown; the planner
shows it with the plan as a SkippedRemoval, and nothing is planned in its place.
"""

from __future__ import annotations

from reconciler.plan.steps import LowState, SkippedRemoval
from states.args import Args
from states.base import PlanContext, StateResult
from states.kind import StateKind

FUNCTION = "director.skipped"


class SkippedArgs(Args):
    reason: str = "not planned"


def skipped(low: LowState, args: SkippedArgs, ctx: PlanContext) -> StateResult:
    """No steps, one SkippedRemoval with the reason."""
    skip = SkippedRemoval(host=low.host, state_id=low.id, reason=args.reason)
    return StateResult(skipped=(skip,))


SKIPPED = StateKind(FUNCTION, SkippedArgs, skipped)
