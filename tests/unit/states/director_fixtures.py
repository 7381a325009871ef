"""Builders shared by the director unit tests: a small inventory, clusters, and host facts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from reconciler.desired.models import Cluster, Desired, Host, Inventory, Settings
from reconciler.facts.hostfacts import (
    Fact,
    HostFacts,
    Interface,
    IpvsDestination,
    IpvsProtocol,
    IpvsService,
    IpvsTable,
    KeepalivedInfo,
    Ledger,
    NftRuleset,
)
from reconciler.plan.compile import compile_directors
from reconciler.plan.steps import LowState, SkippedRemoval, Step
from states.base import PlanContext
from states.registry import DIRECTOR_KINDS

ADDRESSES = {
    "lvs1": "10.77.0.11", "lvs2": "10.77.0.12",
    "web1": "10.77.0.21", "web2": "10.77.0.22", "web3": "10.77.0.23",
}  # fmt: skip
MACS = {h: f"02:00:00:00:00:{int(a.rsplit('.', 1)[1]):02x}" for h, a in ADDRESSES.items()}
# Each host's IPv6 address beside its IPv4 one (`dual=True`): same last octet, in decimal text.
ADDRESSES6 = {h: f"fd78:1::{a.rsplit('.', 1)[1]}" for h, a in ADDRESSES.items()}


def desired(
    backend: str, services: list[dict[str, Any]] | None = None, *, dual: bool = False
) -> Desired:
    if services is None:
        services = [
            {
                "name": "http", "vip": "10.77.0.100", "port": 80,
                "check": {"type": "http", "path": "/healthz", "expect": 200},
                "real_server": [{"host": "web1", "weight": 1}, {"host": "web2", "weight": 2}],
            }
        ]  # fmt: skip
    cluster = Cluster.model_validate(
        {"cluster": {"name": "web", "directors": ["lvs1", "lvs2"], "director": backend},
         "service": services}
    )  # fmt: skip
    hosts = {
        n: Host(name=n, address=a, address6=ADDRESSES6[n] if dual else None)
        for n, a in ADDRESSES.items()
    }
    return Desired(settings=Settings(), inventory=Inventory(hosts=hosts),
                   clusters={"web": cluster}, known_hosts="")  # fmt: skip


def svc(address: str = "10.77.0.100", port: int = 80, sched: str = "wlc",
        persistence: int | None = None, protocol: IpvsProtocol = "tcp") -> IpvsService:  # fmt: skip
    return IpvsService(protocol=protocol, address=address, port=port, scheduler=sched,
                       persistence=persistence)  # fmt: skip


def dest(rs: str, weight: int, vip: str = "10.77.0.100", port: int = 80,
         forward: Literal["route", "tunnel", "masq"] = "route") -> IpvsDestination:  # fmt: skip
    return IpvsDestination(protocol="tcp", service_address=vip, service_port=port,
                           address=ADDRESSES[rs], port=port, forward=forward,
                           weight=weight)  # fmt: skip


def facts(
    host: str,
    *,
    ipvs: IpvsTable | None = None,
    ledger: Mapping[str, tuple[str, ...]] | None = None,
    keepalived: KeepalivedInfo | None = None,
    nft: NftRuleset | None = None,
    ipvs_unknown: str | None = None,
    ledger_unknown: str | None = None,
) -> HostFacts:
    u: Any = Fact.unknown("not in this test")
    return HostFacts(
        host=host, hostname=Fact.of(host),
        interfaces=Fact.of((Interface(name="eth0", mac=MACS[host], up=True),)),
        # No shoal-healthd state file: nothing held down (reconciler.plan.compile_health).
        sysctls=u, arptables=u, iptables_nat=u, files=Fact.of({}), tools=u, services=u,
        ipvs=Fact[IpvsTable].unknown(ipvs_unknown) if ipvs_unknown
        else Fact.of(ipvs or IpvsTable(available=True)),
        keepalived=Fact.of(keepalived or KeepalivedInfo(installed=True)),
        nft=Fact.of(nft or NftRuleset()),
        ledger=Fact[Ledger].unknown(ledger_unknown) if ledger_unknown
        else Fact.of(Ledger(entries=dict(ledger or {}))),
    )  # fmt: skip


def plan(
    d: Desired, f: dict[str, HostFacts]
) -> tuple[list[LowState], list[Step], list[SkippedRemoval]]:
    """Compile and plan the director states; steps in low-state order."""
    lows = compile_directors(d, f)
    ctx = PlanContext(desired=d, facts=f)
    steps: list[Step] = []
    skipped: list[SkippedRemoval] = []
    director = {kind.function: kind for kind in DIRECTOR_KINDS}
    for low in lows:
        kind = director.get(low.function)
        if kind is None:
            continue  # addr.present, kmod and sysctl belong to the generic states
        r = kind.run(low, ctx)
        steps += r.steps
        skipped += r.skipped
    return lows, steps, skipped


def commands(steps: list[Step], host: str | None = None) -> list[str]:
    return [" ".join(c) for s in steps if host in (None, s.host) for c in s.commands]
