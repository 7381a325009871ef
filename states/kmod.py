"""`kmod.present`: a kernel module the director backend needs (today only `ip_vs`).

The facts say whether this kernel can do IPVS at all (`IpvsTable.available`: the module is
loaded or installed). When it can, there is nothing to do: ipvsadm loads the module itself.
When it cannot, no later step can work, and the honest plan says so up front: a `modprobe`
step in the packages phase, which runs before any host changes ARP, addresses or IPVS, and
whose description carries the facts' reason. It fails on such a host, and the rollout stops
there, before anything else changed. A module is never unloaded, so the step has no undo.
"""

from __future__ import annotations

from typing import Literal

from reconciler.steps import LowState
from states.base import PlanContext, StateResult
from states.common import Args, make_step, parse_args

FUNCTION = "kmod.present"


class KmodArgs(Args):
    name: Literal["ip_vs"]


def present(low: LowState, ctx: PlanContext) -> StateResult:
    args = parse_args(KmodArgs, low)
    facts = ctx.facts.get(low.host)
    if facts is None or not facts.ipvs.known or facts.ipvs.value is None:
        # Unknown: the IPVS states of this host are skipped and say why; nothing to add.
        return StateResult()
    table = facts.ipvs.value
    if table.available:
        return StateResult()
    kernel = facts.kernel_release.value if facts.kernel_release.known else None
    why = table.detail or "this kernel has no IPVS"
    step = make_step(
        low,
        "load",
        "pkg",
        f"load kernel module {args.name}: the facts say {why}"
        + (f" (kernel {kernel})" if kernel else "")
        + "; this step will fail and stop the rollout before any change: the ipvsadm backend "
        "needs a kernel with IPVS (or use the nftables backend)",
        before="IPVS unavailable",
        after=f"{args.name} loaded",
        commands=(("modprobe", args.name),),
    )
    return StateResult(steps=(step,))
