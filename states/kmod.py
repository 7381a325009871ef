"""`kmod.present`: a kernel module the director backend needs (today only `ip_vs`).

The facts say whether this kernel can do IPVS at all (`IpvsTable.available`: the module is
loaded or installed). When it is loaded there is nothing to do. When it is installed but not
loaded, the packages phase loads it (`modprobe`), so that the director's IPVS sysctls
(net.ipv4.vs.*, which exist only once it is loaded) can be planned and set in the director's
own phase, before its first IPVS change (states.sysctl, `module`). An empty IPVS table is the
same with the module loaded or not, so loading it changes nothing that carries traffic.

When the kernel cannot do IPVS and the backend needs it (`required`, the ipvsadm backend), no
later step can work, and the honest plan says so up front: a `modprobe` step in the packages
phase, which runs before any host changes ARP, addresses or IPVS, and whose description carries
the facts' reason. It fails on such a host, and the rollout stops there, before anything else
changed. Where the module is optional (keepalived: without IPVS it still runs VRRP), nothing
is planned and the IPVS sysctls skip, saying why. A module is never unloaded: no undo.
"""

from __future__ import annotations

from typing import Literal

from reconciler.plan.steps import LowState
from states.args import Args
from states.base import PlanContext, StateResult
from states.common import make_step
from states.kind import StateKind

FUNCTION = "kmod.present"


class KmodArgs(Args):
    name: Literal["ip_vs"]
    required: bool = True


def present(low: LowState, args: KmodArgs, ctx: PlanContext) -> StateResult:
    facts = ctx.facts.get(low.host)
    if facts is None or not facts.ipvs.known or facts.ipvs.value is None:
        # Unknown: the IPVS states of this host are skipped and say why; nothing to add.
        return StateResult()
    table = facts.ipvs.value
    if table.loaded:
        return StateResult()
    if table.available:
        step = make_step(
            low,
            "load",
            "pkg",
            f"load kernel module {args.name} (installed, not loaded yet), so that its sysctls "
            "can be set before the first IPVS change",
            before=f"{args.name} not loaded",
            after=f"{args.name} loaded",
            commands=(("modprobe", args.name),),
        )
        return StateResult(steps=(step,))
    if not args.required:
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


PRESENT = StateKind(FUNCTION, KmodArgs, present)
