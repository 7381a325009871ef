"""State functions: each plans pure Steps from one low state and one host's facts.

`REGISTRY` maps every function name a low state may use to its state function. It is written
out by hand (no import-time discovery): the generic host states here, then the director states
from `states.director`. `WATCHERS` holds the `mod_watch` of functions that react to a `watch`
requisite. `OWNED` says, for every present form whose objects go into the ledger, how to key
them and which function removes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reconciler.plan.steps import LowState
from states import addr, arptables, file, iptables, kmod, nft, pkg, service, sysctl
from states.base import StateFunction
from states.director import DIRECTOR_STATES

HOST_STATES: dict[str, StateFunction] = {
    "sysctl.present": sysctl.present,
    "sysctl.absent": sysctl.absent,
    "addr.present": addr.present,
    "addr.absent": addr.absent,
    "arptables.rule_present": arptables.present,
    "arptables.rule_absent": arptables.absent,
    "nft.table_present": nft.present,
    "nft.table_absent": nft.absent,
    "iptables.rule_present": iptables.present,
    "iptables.rule_absent": iptables.absent,
    "file.managed": file.managed,
    "file.absent": file.absent,
    "service.running": service.running,
    "service.enabled": service.enabled,
    "service.disabled": service.disabled,
    "pkg.installed": pkg.installed,
    kmod.FUNCTION: kmod.present,
}

REGISTRY: dict[str, StateFunction] = {**HOST_STATES, **DIRECTOR_STATES}

WATCHERS: dict[str, StateFunction] = {"service.running": service.mod_watch}


@dataclass(frozen=True, slots=True)
class Ownership:
    """How the ledger names a present form's object, and the function that removes it.

    `removal_rank` orders removals on one host: lower goes first (a VIP before the ARP
    suppression that guards it, a unit disabled before its file goes).
    """

    key: Callable[[LowState], str]
    absent: str
    removal_rank: int


OWNED: dict[str, Ownership] = {
    "addr.present": Ownership(addr.ledger_key, "addr.absent", 10),
    "iptables.rule_present": Ownership(iptables.ledger_key, "iptables.rule_absent", 20),
    "arptables.rule_present": Ownership(arptables.ledger_key, "arptables.rule_absent", 30),
    "nft.table_present": Ownership(nft.ledger_key, "nft.table_absent", 30),
    "sysctl.present": Ownership(sysctl.ledger_key, "sysctl.absent", 40),
    "service.enabled": Ownership(service.ledger_key, "service.disabled", 50),
    "file.managed": Ownership(file.ledger_key, "file.absent", 60),
}

__all__ = ["HOST_STATES", "OWNED", "REGISTRY", "WATCHERS", "Ownership"]
