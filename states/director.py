"""The director states in one registry (`DIRECTOR_STATES`), plus `director.skipped`.

`director.skipped` carries a reason the director compiler could not plan something (an unknown
ledger, IPVS table or MAC) into the plan, where it is shown as a SkippedRemoval.
"""

from __future__ import annotations

from reconciler.plan.steps import LowState, SkippedRemoval
from states import ipvs, keepalived, nft_dsr
from states.base import PlanContext, StateFunction, StateResult


def skipped(low: LowState, ctx: PlanContext) -> StateResult:
    """`director.skipped`: no steps, one SkippedRemoval with `args["reason"]`."""
    reason = str(low.args.get("reason", "not planned"))
    return StateResult(skipped=(SkippedRemoval(host=low.host, state_id=low.id, reason=reason),))


DIRECTOR_STATES: dict[str, StateFunction] = {
    "ipvs.service_present": ipvs.service_present,
    "ipvs.real_server_present": ipvs.real_server_present,
    "ipvs.real_server_absent": ipvs.real_server_absent,
    "ipvs.service_absent": ipvs.service_absent,
    keepalived.FUNCTION: keepalived.plan_config,
    nft_dsr.FUNCTION: nft_dsr.plan_dsr_table,
    nft_dsr.ABSENT_FUNCTION: nft_dsr.plan_dsr_table_absent,
    "director.skipped": skipped,
}
