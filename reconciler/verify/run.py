"""The verification phase: prove, with real traffic and real ARP, that each cluster works.

Run after every apply (the executor rolls back when it fails) and by `shoal verify`. From each
client host named in `settings.verify.clients`, over SSH:

1. Traffic. Enough requests to every VIP:port that each real server with weight > 0 gets some
   (`reconciler.verify.probe_traffic` runs on the client). Arrivals are counted where they land: a
   short-lived netdev ingress table (`shoal_verify_<run>`, named counters only, policy accept) on
   each real server counts the client's connection openings to the VIP, and the same kind of
   table on the active director counts the client's packets to the VIP (forward) and any reply
   from the VIP to the client (return). In Direct Routing the replies go straight from the real
   servers to the client, so the director's return counter must stay at 0. The tables are
   removed when the phase ends, whatever happens.
2. ARP. Broadcast ARP requests for each VIP from the client (`reconciler.verify.probe_arp`, or
   `arping -b` where the login has no packet socket) must be answered by exactly one MAC, the
   active director's (the director whose client-facing interface holds the VIP); any other
   responder is named ("web2 answers ARP for 10.77.0.100"). The client's neighbour entry for the
   VIP (`ip -j neigh`) must point at the active director too. An IPv6 VIP is asked by Neighbour
   Solicitations to its solicited-node group instead (`reconciler.verify.probe_nd`, or `ndisc6`)
   and judged the same way (check "nd": "web2 answers Neighbour Solicitations for ...").

Every step runs on all hosts at once, and the ARP probes start first and run while the hosts are
inspected and the traffic flows, so a verification costs the longer of the ARP window (about a
second) and five SSH round trips plus the traffic rounds: under two seconds on an idle machine.

The result is a typed `VerificationResult` (`reconciler.verify.result`); a failure names the
host at fault where one is known. This module orders the phase over the `Transport`: the
inspection and the VRRP wait here, the traffic in `reconciler.verify.traffic`, ARP in
`reconciler.verify.arp`, all through one `reconciler.verify.session.Session`. What the hosts
print is read by `reconciler.facts.parsers`; what it all means is `reconciler.verify.judge`'s to
say.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping

from reconciler.desired.endpoint import endpoint
from reconciler.desired.models import Desired, family_of
from reconciler.errors import TransportError
from reconciler.facts.hostfacts import HostFacts
from reconciler.facts.parsers.ip_addr import parse_ip_addr
from reconciler.transport.protocol import Transport
from reconciler.verify.arp import arp_check, arp_responders
from reconciler.verify.judge import active_director, ip_addresses, judge_traffic
from reconciler.verify.nd import nd_responders
from reconciler.verify.result import ServiceTraffic, VerificationResult
from reconciler.verify.session import Session
from reconciler.verify.tally import Job
from reconciler.verify.traffic import Traffic

# Seconds beyond three VRRP advertisement intervals to wait for a keepalived election to settle.
VRRP_SETTLE_SLACK = 3.0


async def inspect(s: Session, hosts: Iterable[str]) -> None:
    """Every host's links (step 1: what holds what); a host that cannot tell fails setup."""

    async def one(host: str) -> None:
        try:
            rc, out, err = await s.run(host, ("ip", "-j", "addr", "show"))
        except TransportError as exc:
            s.fail("setup", host, f"{host} cannot be inspected: {exc}")
            return
        if rc != 0:
            s.fail("setup", host, f"{host}: ip -j addr show failed: {err.strip()}")
            return
        s.links[host] = parse_ip_addr(out)

    await asyncio.gather(*(one(h) for h in sorted(set(hosts))))


def director_of(s: Session, cluster: str, vip: str) -> str | None:
    """The active director of `vip` in `cluster`, or None (the failure is recorded)."""
    director, failures = active_director(cluster, s.clusters[cluster].cluster, vip, s.seen)
    s.failures.extend(failures)
    return director


async def settle_vrrp(s: Session) -> None:
    """Wait (bounded) until every keepalived cluster's VIPs sit on its primary alone.

    Right after keepalived starts or reloads, VRRP takes about three advertisement intervals
    to elect its master: until then the backup may hold the VIPs, or both may for a moment,
    and traffic and ARP checked in that window would judge the election, not the cluster.
    A cluster that stays failed over (its primary down) is verified as it is after the wait.
    """
    vrrp = [cl.cluster for cl in s.clusters.values() if cl.cluster.director == "keepalived"]
    if not vrrp:
        return
    directors = sorted({d for head in vrrp for d in head.directors})
    wait = max(3 * head.vrrp.advert_interval for head in vrrp) + VRRP_SETTLE_SLACK
    deadline = time.monotonic() + wait

    async def addresses(host: str) -> set[str]:
        try:
            rc, out, _ = await s.run(host, ("ip", "-j", "addr", "show"))
        except TransportError:
            return set()
        links = parse_ip_addr(out) if rc == 0 else ()
        return {a for link in links if link.name == s.iface(host) for a in ip_addresses(link)}

    while True:
        found = await asyncio.gather(*map(addresses, directors))
        held = dict(zip(directors, found, strict=True))
        settled = all(
            (vip in held[d]) == (d == head.primary)
            for head in vrrp
            for vip in {svc.vip for svc in s.clusters[head.name].services}
            for d in head.directors
        )
        if settled or time.monotonic() >= deadline:
            return
        await asyncio.sleep(0.5)


async def verify_desired(
    desired: Desired,
    transport: Transport,
    facts: Mapping[str, HostFacts] | None = None,
    *,
    clusters: Iterable[str] | None = None,
) -> VerificationResult:
    """Verify every cluster of `desired` (or `clusters`) from the configured client hosts.

    `facts` (from the last gathering) are used only to name a MAC that no inspected host has.
    Never raises for a host that misbehaves: that is a failure in the result.
    """
    started = time.monotonic()
    v = Session(desired, transport, facts, clusters)
    tr = Traffic(v)
    if not v.cfg.enabled:
        return VerificationResult(
            ok=True, revision=desired.revision, notes=("verification is disabled in shoal.toml",)
        )
    clients = tuple(v.cfg.clients)
    if not clients:
        return VerificationResult(
            ok=True,
            revision=desired.revision,
            notes=("no verify.clients in shoal.toml: nothing was verified",),
        )
    hosts: set[str] = set(clients)
    for cl in v.clusters.values():
        hosts.update(cl.cluster.directors)
        for svc in cl.services:
            hosts.update(rs.host for rs in svc.real_servers)
    await settle_vrrp(v)
    # The ARP probes need nothing from the inspection, and their window is the longest wait of
    # the phase: they start first and are judged once the hosts are known.
    asking = {
        (client, vip): asyncio.create_task(
            (nd_responders if family_of(vip) == 6 else arp_responders)(v, client, vip)
        )
        for vip in sorted({svc.vip for cl in v.clusters.values() for svc in cl.services})
        for client in clients
    }
    try:
        return await _verify(v, tr, clients, hosts, asking, started)
    finally:
        for task in asking.values():
            task.cancel()
        # Each task is awaited once more: cancelled, done or failed, none is left pending.
        await asyncio.gather(*asking.values(), return_exceptions=True)


async def _verify(
    v: Session,
    tr: Traffic,
    clients: tuple[str, ...],
    hosts: set[str],
    asking: Mapping[tuple[str, str], asyncio.Task[list[str]]],
    started: float,
) -> VerificationResult:
    await inspect(v, hosts)

    jobs: list[Job] = []
    vips: dict[tuple[str, str], str | None] = {}  # (cluster, vip) -> active director
    for cname, cl in v.clusters.items():
        for svc in cl.services:
            key = (cname, svc.vip)
            if key not in vips:
                vips[key] = director_of(v, cname, svc.vip)
            director = vips[key]
            if not any(rs.weight > 0 for rs in svc.real_servers):
                where = endpoint(svc.vip, svc.port)
                v.notes.append(f"{svc.name} {where}: no real server has weight > 0")
                continue
            jobs.extend(tr.job(cname, svc, client, director) for client in clients)

    services: list[ServiceTraffic] = []
    reachable_clients = [c for c in clients if c in v.links]
    traffic_done = asyncio.Event()

    async def traffic() -> None:
        # The tables go as soon as the last counters are read, while the ARP checks read the
        # clients' neighbour entries.
        try:
            await tr.install_tables()
            services.extend(
                await tr.all_traffic([j for j in jobs if j.client in reachable_clients])
            )
        finally:
            traffic_done.set()
            await tr.remove_tables()
        for t in services:
            v.failures.extend(judge_traffic(t))

    try:
        arp_vips = {vip: director for (_, vip), director in sorted(vips.items())}
        _, arps = await asyncio.gather(
            traffic(),
            asyncio.gather(
                *(
                    arp_check(
                        v,
                        client,
                        vip,
                        director,
                        asking[client, vip],
                        traffic_done,
                        "nd" if family_of(vip) == 6 else "arp",
                    )
                    for vip, director in arp_vips.items()
                    for client in reachable_clients
                )
            ),
        )
        arp_checks = list(arps)
    finally:
        # Only what is still installed (cancelled, or an error above).
        await tr.remove_tables()
    return VerificationResult(
        ok=not v.failures,
        revision=v.desired.revision,
        clients=clients,
        services=tuple(services),
        arp=tuple(arp_checks),
        failures=tuple(v.failures),
        notes=tuple(v.notes),
        elapsed=round(time.monotonic() - started, 3),
    )
