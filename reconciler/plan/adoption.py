"""Adoption: what a host that adopts (`adopt = true`) hands over to shoal in a plan, pure.

Only what shoal creates goes into a host's ledger, and only what the ledger lists is ever
removed; so a VIP, an ARP rule or a REDIRECT set up by hand before shoal came stays forever,
even once the repository no longer wants it. On a host that adopts, every object the desired
state wants and the host already has, exactly as wanted, is recorded in the ledger as shoal's
(`adoption_claims`): the plan's ledger step says which ones, and from then on removing it from
the repository removes it from the host like anything shoal made.

sysctls are not adopted: the ledger keeps each one's value from before shoal changed it, to
give it back when the host leaves; for a value set by hand that earlier value is unknown, so
shoal leaves the setting as it is. The director backends record what they serve on their own
(their ledger updates), adopting or not.
"""

from __future__ import annotations

from reconciler.plan.steps import LowState
from states.base import Claim, StateResult
from states.kind import AnyKind

# Kinds whose objects carry a value from before shoal that adoption cannot know.
NOT_ADOPTED = frozenset({"sysctl.present"})


def adoption_claims(low: LowState, kind: AnyKind, args: object, result: StateResult) -> list[Claim]:
    """The ledger entry an adopting host gives shoal for `low`: one, when the host already has
    the object exactly as wanted (no step, nothing skipped); none otherwise."""
    if result.steps or result.skipped or kind.owns is None or low.origin == "ledger":
        return []
    if low.function in NOT_ADOPTED:
        return []
    return [Claim(low.function, kind.owns.key(args))]
