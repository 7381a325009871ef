"""Adoption: what a host that adopts (`adopt = true`) hands over to shoal in a plan, pure.

Only what shoal creates goes into a host's ledger, and only what the ledger lists is ever
removed; so a VIP, an ARP rule or a REDIRECT set up by hand before shoal came stays forever,
even once the repository no longer wants it. On a host that adopts, every object the desired
state wants and the host already has, exactly as wanted, is recorded in the ledger as shoal's
(`adoption_claims`): the plan's ledger step says which ones, and from then on removing it from
the repository removes it from the host like anything shoal made.

sysctls are not adopted: the ledger keeps each one's value from before shoal changed it, to
give it back when the host leaves; for a value set by hand that earlier value is unknown, so
shoal leaves the setting as it is.

Director states (IPVS services and real servers, the nftables DSR table, keepalived's real
servers) follow the same rule: their `add` ledger ops name what the state would own; the state
claims only what it creates, and an object found already in sync becomes shoal's only here, on a
host that adopts. Without adoption a hand-made IPVS service that matches the repository stays
foreign, so removing it from the repository later leaves it alone.
"""

from __future__ import annotations

from reconciler.plan.steps import LowState
from states.base import Claim, StateResult, created
from states.kind import AnyKind

# Kinds whose objects carry a value from before shoal that adoption cannot know.
NOT_ADOPTED = frozenset({"sysctl.present"})


def adoption_claims(low: LowState, kind: AnyKind, args: object, result: StateResult) -> list[Claim]:
    """The ledger entry an adopting host gives shoal for `low`: one, when the host already has
    the object exactly as wanted (no step, nothing skipped); none otherwise."""
    if result.steps or result.skipped or low.origin == "ledger":
        return []
    if kind.ledger is not None:
        return list(created(kind.ledger(args)))
    if kind.owns is None or low.function in NOT_ADOPTED:
        return []
    return [Claim(low.function, kind.owns.key(args))]
