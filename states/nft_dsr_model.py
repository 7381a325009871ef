"""The desired DSR table from a `nft.dsr_table` low state: its args, and the bucket maths.

Each real server gets a contiguous range of hash buckets proportional to its weight (divided by
the weights' gcd); weight 0 gets none (drained). A persistent service hashes on the client
address only (`ip saddr` or `ip6 saddr`: client affinity), others on the flow; without buckets
there is no hash, so no affinity either.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from reconciler.desired.models import address_order
from reconciler.facts.hostfacts import HostFacts
from reconciler.facts.parsers.nft_dsr import Bucket, DsrService, DsrTable
from states.args import Args, LedgerOp

FAMILY = "netdev"
TABLE = "shoal_dsr"


class MemberArgs(Args):
    host: str
    mac: str
    weight: int
    # shoal-healthd holds it out (its check fails): no buckets now, its weight at boot.
    held_down: bool = False


class DsrServiceArgs(Args):
    protocol: str
    vip: str
    port: int
    persistence: int = 0
    members: tuple[MemberArgs, ...] = ()


class DsrTableArgs(Args):
    interface: str
    director_mac: str
    services: tuple[DsrServiceArgs, ...] = ()
    # Why the compiler could not plan the table (a MAC it does not know): nothing but a skip.
    skip_reason: str | None = None
    drain_timeout: float = 30.0
    ledger: tuple[LedgerOp, ...] = ()


class DsrTableAbsentArgs(Args):
    ledger: tuple[LedgerOp, ...] = ()


def weighted_buckets(members: Sequence[tuple[str, int]]) -> tuple[Bucket, ...]:
    """Contiguous bucket ranges proportional to weight; `members` is (mac, weight), in order."""
    live = [(mac.lower(), w) for mac, w in members if w > 0]
    if not live:
        return ()
    g = 0
    for _, w in live:
        g = math.gcd(g, w)
    out: list[Bucket] = []
    start = 0
    for mac, w in live:
        n = w // g
        out.append(Bucket(start, start + n - 1, mac))
        start += n
    return tuple(out)


def table_from_args(args: DsrTableArgs, *, at_boot: bool = False) -> DsrTable:
    """The model of the table a low state asks for (see `reconciler.plan.compile_nftables`);
    without the members shoal-healthd holds out, unless `at_boot` (the restore script's)."""
    services = []
    for s in args.services:
        buckets = weighted_buckets(
            [(m.mac, 0 if m.held_down and not at_boot else m.weight) for m in s.members]
        )
        services.append(
            DsrService(
                protocol=s.protocol,
                vip=s.vip,
                port=s.port,
                # Without buckets there is no hash, so affinity has no meaning (and no trace).
                client_affinity=bool(buckets) and s.persistence > 0,
                buckets=buckets,
            )
        )
    services.sort(key=lambda x: (x.protocol, address_order(x.vip), x.port))
    return DsrTable(args.interface, args.director_mac.lower(), tuple(services))


def same(a: DsrTable, b: DsrTable) -> bool:
    """Whether the table read back is the desired one."""
    # A table whose services are all drained carries no director MAC in its rules.
    if a.interface != b.interface or a.services != b.services:
        return False
    return not b.director_mac or not a.director_mac or a.director_mac == b.director_mac


def current_members(t: DsrTable) -> dict[str, set[str]]:
    """Per service chain, the MACs that hold buckets."""
    return {s.chain: {b.mac for b in s.buckets} for s in t.services}


def macs_of(facts: Iterable[HostFacts]) -> dict[str, dict[str, str]]:
    """host -> interface -> MAC, from the hosts whose interfaces are known."""
    out: dict[str, dict[str, str]] = {}
    for f in facts:
        if f.interfaces.known and f.interfaces.value is not None:
            out[f.host] = {i.name: i.mac.lower() for i in f.interfaces.value if i.mac}
    return out
