"""Planning for a firewall rule that is appended with `-A` and deleted with `-D`.

arptables and iptables rules work alike: `-A` appends a duplicate when the rule is already
there, so whether to add is decided by counting the matching rules in the facts. Ownership is by
count: shoal appends a rule only when no copy is there, so it owns exactly one copy of each
rule its ledger lists, and removal deletes that one copy (`-D` takes one instance). An exact
copy an operator added stays. The tool's own module says what its rule looks like; this one
plans the add or the delete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reconciler.plan.steps import Argv, LowState, Subsystem
from states.base import Claim, StateResult
from states.common import FactUnknown, make_step, skip


@dataclass(frozen=True, slots=True)
class AppendedRule:
    """One rule as its tool's state module spells it."""

    function: str  # the present form that owns it in the ledger
    tool: str  # "arptables", "iptables": for skip reasons
    subsystem: Subsystem
    key: str  # its ledger key
    line: str  # how the rule is shown in a step's change
    add: Argv
    delete: Argv


def plan_present(
    low: LowState, rule: AppendedRule, count: Callable[[], int], description: str
) -> StateResult:
    """Add the rule unless `count()` finds it; skip when the facts needed are unknown."""
    try:
        found = count()
    except FactUnknown as exc:
        return skip(low, f"cannot plan {rule.tool} {rule.key}: {exc.reason}", unknown=exc.unread)
    if found:
        return StateResult()
    step = make_step(
        low,
        "add",
        rule.subsystem,
        description,
        after=rule.line,
        commands=(rule.add,),
        undo=(rule.delete,),
    )
    return StateResult(steps=(step,), claims=(Claim(rule.function, rule.key),))


def plan_absent(
    low: LowState, rule: AppendedRule, count: Callable[[], int], description: str
) -> StateResult:
    """Delete shoal's one copy (if `count()` finds any) and release the ledger entry."""
    try:
        found = count()
    except FactUnknown as exc:
        return skip(low, f"not removing {rule.tool} {rule.key}: {exc.reason}", unknown=exc.unread)
    release = (Claim(rule.function, rule.key),)
    if not found:
        return StateResult(releases=release)
    # Any further copy is someone else's: -D removes one instance, shoal's.
    kept = f" ({found - 1} identical copy(ies) not shoal's stay)" if found > 1 else ""
    step = make_step(
        low,
        "delete",
        rule.subsystem,
        description + kept,
        before=rule.line,
        commands=(rule.delete,),
        undo=(rule.add,),
    )
    return StateResult(steps=(step,), releases=release)
