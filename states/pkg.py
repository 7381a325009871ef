"""`pkg.installed`: install the packages whose tools the facts report missing (`apt-get`).

Args map a tool (as the facts name it, e.g. "arptables") to the package that provides it.
Packages are never removed: a leftover tool harms nothing, and removing one could take other
software's dependencies with it. So the step has no undo and nothing goes into the ledger.
"""

from __future__ import annotations

from reconciler.desired.models import Name
from reconciler.plan.steps import LowState
from states.args import Args
from states.base import PlanContext, StateResult
from states.common import FactUnknown, host_facts, known, make_step, skip
from states.kind import StateKind

_APT_INSTALL = (
    "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "--no-install-recommends"
)  # fmt: skip


class PkgArgs(Args):
    packages: dict[Name, Name]  # tool -> package


def installed(low: LowState, args: PkgArgs, ctx: PlanContext) -> StateResult:
    try:
        tools = known(host_facts(low, ctx).tools, "installed tools")
    except FactUnknown as exc:
        return skip(low, f"cannot plan packages: {exc.reason}", unknown=exc.unread)
    not_gathered = sorted(t for t in args.packages if t not in tools)
    if not_gathered:
        return skip(low, f"cannot plan packages: tools not gathered: {', '.join(not_gathered)}")
    missing = sorted({pkg for tool, pkg in args.packages.items() if not tools[tool]})
    if not missing:
        return StateResult()
    step = make_step(
        low,
        "install",
        "pkg",
        f"install {' '.join(missing)}",
        after="\n".join(missing),
        commands=((*_APT_INSTALL, *missing),),
    )
    return StateResult(steps=(step,))


INSTALLED = StateKind("pkg.installed", PkgArgs, installed)
