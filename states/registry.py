"""Every state kind shoal plans, by function name: the one list to extend for a new kind.

Written out by hand (no import-time discovery): the host states, then the director states. The
compiler, the boot form and the planner look kinds up here (`kind_of`); a function that is not
listed is refused with UnknownStateKind, naming it and the known ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from states import (
    addr,
    arptables,
    director,
    file,
    iptables,
    ipvs,
    keepalived,
    kmod,
    nft,
    nft_dsr,
    pkg,
    service,
    sysctl,
)
from states.kind import AnyKind, Ownership

HOST_KINDS: tuple[AnyKind, ...] = (
    sysctl.PRESENT,
    sysctl.ABSENT,
    addr.PRESENT,
    addr.ABSENT,
    arptables.PRESENT,
    arptables.ABSENT,
    nft.PRESENT,
    nft.ABSENT,
    iptables.PRESENT,
    iptables.ABSENT,
    file.MANAGED,
    file.ABSENT,
    service.RUNNING,
    service.ENABLED_KIND,
    service.DISABLED,
    pkg.INSTALLED,
    kmod.PRESENT,
)

DIRECTOR_KINDS: tuple[AnyKind, ...] = (
    ipvs.SERVICE_PRESENT,
    ipvs.REAL_SERVER_PRESENT,
    ipvs.REAL_SERVER_ABSENT,
    ipvs.SERVICE_ABSENT,
    keepalived.CONFIG,
    nft_dsr.TABLE_PRESENT,
    nft_dsr.TABLE_ABSENT,
    director.SKIPPED,
)


class UnknownStateKind(KeyError):
    """A low state names a function no kind is registered for."""

    def __init__(self, function: str) -> None:
        self.function = function
        super().__init__(f"unknown state function {function!r} (known: {', '.join(sorted(KINDS))})")

    def __str__(self) -> str:
        return str(self.args[0])


def _by_function(kinds: tuple[AnyKind, ...]) -> Mapping[str, AnyKind]:
    out: dict[str, AnyKind] = {}
    for kind in kinds:
        if kind.function in out:
            raise ValueError(f"state kind {kind.function} is registered twice")
        out[kind.function] = kind
    return MappingProxyType(out)


KINDS: Mapping[str, AnyKind] = _by_function(HOST_KINDS + DIRECTOR_KINDS)

# Present form -> how its ledger objects are keyed and removed.
OWNED: Mapping[str, Ownership[Any]] = MappingProxyType(
    {k.function: k.owns for k in KINDS.values() if k.owns is not None}
)

# The kinds with a boot form, in the order the restore script brings their objects back.
RESTORED: tuple[AnyKind, ...] = tuple(
    sorted(
        (k for k in KINDS.values() if k.persist is not None),
        key=lambda k: k.persist.order if k.persist is not None else 0,
    )
)


def kind_of(function: str) -> AnyKind:
    """The kind of `function`; UnknownStateKind if none is registered."""
    kind = KINDS.get(function)
    if kind is None:
        raise UnknownStateKind(function)
    return kind
