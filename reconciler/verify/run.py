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
   VIP (`ip -j neigh`) must point at the active director too.

Every step runs on all hosts at once, and the ARP probes start first and run while the hosts are
inspected and the traffic flows, so a verification costs the longer of the ARP window (about a
second) and five SSH round trips plus the traffic rounds: under two seconds on an idle machine.

The result is a typed `VerificationResult` (`reconciler.verify.result`); a failure names the
host at fault where one is known. This module runs the phase over the `Transport`. What the
hosts print is read by `reconciler.facts.parsers`, the probe tables are
`reconciler.verify.counters`, the probes' bookkeeping `reconciler.verify.tally`, and what it all
means is `reconciler.verify.judge`'s to say.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reconciler.desired.models import Desired, Service
from reconciler.errors import TransportError
from reconciler.facts.hostfacts import HostFacts, Interface
from reconciler.facts.parsers.arping import parse_arping
from reconciler.facts.parsers.ip_addr import parse_ip_addr
from reconciler.facts.parsers.ip_neigh import parse_ip_neigh
from reconciler.facts.parsers.nft_counters import parse_nft_counters
from reconciler.transport.protocol import Transport
from reconciler.verify.counters import CounterTable, from_vip, to_vip
from reconciler.verify.judge import (
    Inspection,
    active_director,
    ipv4_addresses,
    judge_arp,
    judge_traffic,
)
from reconciler.verify.probe_arp import NOT_PERMITTED, arp_probe_source
from reconciler.verify.probe_traffic import probe_source
from reconciler.verify.result import (
    ArpCheck,
    ArpResponder,
    CheckKind,
    ServiceTraffic,
    VerificationFailure,
    VerificationResult,
)
from reconciler.verify.tally import Job, Tally

# How many probe rounds at most before a weighted real server that got nothing is reported;
# a hashing director spreads by source port, so one unlucky round is possible, three are not.
MAX_ROUNDS = 3
MAX_REQUESTS = 5000
# Requests the client keeps in flight: a round of 30 costs about 8 request times, not 30. Few
# enough for a small accept backlog (Python's socketserver listens with 5).
PROBE_CONCURRENCY = 4
# Seconds beyond three VRRP advertisement intervals to wait for a keepalived election to settle.
VRRP_SETTLE_SLACK = 3.0
# The ARP probe: ARP_COUNT broadcast requests ARP_INTERVAL apart, replies collected until
# ARP_WINDOW seconds after the first (longer than Linux's default proxy-ARP delay of 0.8 s).
ARP_COUNT = 5
ARP_INTERVAL = 0.1
ARP_WINDOW = 1.0
# The arping fallback: iputils takes whole seconds between requests.
ARPING_COUNT = 3


class _ArpNotAsked(Exception):
    """The client could not send its ARP probe (the message says why)."""


class _Verifier:
    def __init__(
        self,
        desired: Desired,
        transport: Transport,
        facts: Mapping[str, HostFacts] | None,
        clusters: Iterable[str] | None,
    ) -> None:
        self.desired = desired
        self.t = transport
        self.facts = facts or {}
        self.cfg = desired.settings.verify
        names = list(clusters) if clusters is not None else list(desired.clusters)
        self.clusters = {n: desired.clusters[n] for n in names}
        self.failures: list[VerificationFailure] = []
        self.notes: list[str] = []
        # Filled by `inspect`; `seen` reads the same dict.
        self.links: dict[str, tuple[Interface, ...]] = {}
        interfaces = {h: inv.interface for h, inv in desired.inventory.hosts.items()}
        self.seen = Inspection(self.links, interfaces, self.facts)
        self.run_id = secrets.token_hex(4)
        self.tables: dict[str, CounterTable] = {}

    # -- helpers

    def fail(self, check: CheckKind, host: str | None, message: str) -> None:
        self.failures.append(VerificationFailure(check=check, host=host, message=message))

    def iface(self, host: str) -> str:
        return self.desired.inventory.hosts[host].interface

    def addr(self, host: str) -> str:
        return self.desired.inventory.hosts[host].address

    async def run(
        self, host: str, argv: Sequence[str], *, input: str | None = None,
        timeout: float | None = None,
    ) -> tuple[int | None, str, str]:
        res = await self.t.run(host, tuple(argv), input=input, timeout=timeout, check=False)
        return res.exit_status, str(res.stdout), str(res.stderr)

    # -- step 1: what holds what

    async def inspect(self, hosts: Iterable[str]) -> None:
        async def one(host: str) -> None:
            try:
                rc, out, err = await self.run(host, ("ip", "-j", "addr", "show"))
            except TransportError as exc:
                self.fail("setup", host, f"{host} cannot be inspected: {exc}")
                return
            if rc != 0:
                self.fail("setup", host, f"{host}: ip -j addr show failed: {err.strip()}")
                return
            self.links[host] = parse_ip_addr(out)

        await asyncio.gather(*(one(h) for h in sorted(set(hosts))))

    def active_director(self, cluster: str, vip: str) -> str | None:
        director, failures = active_director(
            cluster, self.clusters[cluster].cluster, vip, self.seen
        )
        self.failures.extend(failures)
        return director

    async def settle_vrrp(self) -> None:
        """Wait (bounded) until every keepalived cluster's VIPs sit on its primary alone.

        Right after keepalived starts or reloads, VRRP takes about three advertisement intervals
        to elect its master: until then the backup may hold the VIPs, or both may for a moment,
        and traffic and ARP checked in that window would judge the election, not the cluster.
        A cluster that stays failed over (its primary down) is verified as it is after the wait.
        """
        vrrp = [cl.cluster for cl in self.clusters.values() if cl.cluster.director == "keepalived"]
        if not vrrp:
            return
        directors = sorted({d for head in vrrp for d in head.directors})
        wait = max(3 * head.vrrp.advert_interval for head in vrrp) + VRRP_SETTLE_SLACK
        deadline = time.monotonic() + wait

        async def addresses(host: str) -> set[str]:
            try:
                rc, out, _ = await self.run(host, ("ip", "-j", "addr", "show"))
            except TransportError:
                return set()
            links = parse_ip_addr(out) if rc == 0 else ()
            return {
                a for link in links if link.name == self.iface(host) for a in ipv4_addresses(link)
            }

        while True:
            found = await asyncio.gather(*map(addresses, directors))
            held = dict(zip(directors, found, strict=True))
            settled = all(
                (vip in held[d]) == (d == head.primary)
                for head in vrrp
                for vip in {s.vip for s in self.clusters[head.name].services}
                for d in head.directors
            )
            if settled or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.5)

    # -- step 2: counters

    def table_for(self, host: str) -> CounterTable:
        if host not in self.tables:
            self.tables[host] = CounterTable(
                host, self.iface(host), f"shoal_verify_{self.run_id}"
            )
        return self.tables[host]

    async def install_tables(self) -> None:
        async def one(tab: CounterTable) -> None:
            try:
                rc, _, err = await self.run(tab.host, ("nft", "-f", "-"), input=tab.ruleset())
            except TransportError as exc:
                self.notes.append(f"{tab.host}: cannot count arrivals: {exc}")
                return
            if rc == 0:
                tab.installed = True
            else:
                self.notes.append(f"{tab.host}: cannot count arrivals (nft): {err.strip()}")

        await asyncio.gather(*(one(t) for t in self.tables.values()))

    async def read_counters(self, host: str) -> dict[str, int] | None:
        tab = self.tables.get(host)
        if tab is None or not tab.installed:
            return None
        try:
            rc, out, _ = await self.run(
                host, ("nft", "-j", "list", "counters", "table", "netdev", tab.table)
            )
        except TransportError:
            return None
        return parse_nft_counters(out) if rc == 0 else None

    async def remove_tables(self) -> None:
        """Delete every installed probe table; safe to call again (each is deleted once)."""

        async def one(tab: CounterTable) -> None:
            tab.installed = False
            try:
                rc, _, err = await self.run(
                    tab.host, ("nft", "delete", "table", "netdev", tab.table)
                )
            except TransportError as exc:
                self.notes.append(f"{tab.host}: probe table {tab.table} left behind: {exc}")
                return
            if rc != 0:
                self.notes.append(f"{tab.host}: probe table {tab.table} left behind: {err}")

        await asyncio.gather(*(one(t) for t in self.tables.values() if t.installed))

    # -- step 3: traffic

    def request_count(self, svc: Service) -> int:
        weights = [rs.weight for rs in svc.real_servers if rs.weight > 0]
        # Enough that the lightest server expects `requests_per_server` of them.
        total = self.cfg.requests_per_server * math.ceil(sum(weights) / min(weights))
        return min(total, MAX_REQUESTS)

    async def probe(self, client: str, svc: Service, count: int) -> dict[str, Any] | None:
        argv = [
            "python3", "-", "--vip", svc.vip, "--port", str(svc.port),
            "--protocol", svc.protocol, "--count", str(count),
            "--timeout", str(self.cfg.timeout),
            "--max-failures", str(max(3, count // 10)),
            "--deadline", str(self.deadline(count)),
            "--concurrency", str(min(PROBE_CONCURRENCY, count)),
        ]
        if svc.protocol == "tcp" and svc.check.type == "http":
            argv += ["--http", svc.check.path]
        try:
            rc, out, err = await self.run(
                client, argv, input=probe_source(), timeout=self.deadline(count) + 30
            )
        except TransportError as exc:
            self.fail("probe", client, f"{client} cannot send requests: {exc}")
            return None
        if rc != 0:
            self.fail("probe", client, f"{client}: the probe failed: {err.strip()[-400:]}")
            return None
        result: dict[str, Any] = json.loads(out)
        return result

    def deadline(self, count: int) -> float:
        return min(600.0, 10.0 + count * 0.2)

    async def all_traffic(self, jobs: Sequence[Job]) -> list[ServiceTraffic]:
        """Probe rounds for every job at once; after each round every host's counters are read
        once. A job gets another round (up to MAX_ROUNDS) while a weighted real server got
        nothing and no request failed."""
        tallies = [Tally() for _ in jobs]
        pending = list(range(len(jobs)))
        while pending:
            results = await asyncio.gather(
                *(self.probe(jobs[i].client, jobs[i].svc, self.request_count(jobs[i].svc))
                  for i in pending)
            )  # fmt: skip
            hosts = sorted({h for i in pending for h in jobs[i].counter_hosts()})
            read = await asyncio.gather(*map(self.read_counters, hosts))
            counters = dict(zip(hosts, read, strict=True))
            again = []
            for i, res in zip(pending, results, strict=True):
                tally = tallies[i]
                tally.rounds += 1
                tally.counters.update(counters)
                if res is None:
                    continue
                tally.add(res)
                if not tally.failed and tally.missing(jobs[i]) and tally.rounds < MAX_ROUNDS:
                    again.append(i)
            pending = again
        return [tally.traffic(job) for job, tally in zip(jobs, tallies, strict=True)]

    # -- step 4: ARP

    async def arp_responders(self, client: str, vip: str) -> list[str]:
        """The MACs answering ARP for `vip` asked from `client`, first seen first.

        Records nothing itself, so it can start before the client is known to be reachable:
        raises `_ArpNotAsked` (the probe could not run) or `TransportError`.
        """
        iface = self.iface(client)
        rc, out, err = await self.run(
            client,
            ("python3", "-", "--iface", iface, "--vip", vip, "--count", str(ARP_COUNT),
             "--interval", str(ARP_INTERVAL), "--window", str(ARP_WINDOW)),
            input=arp_probe_source(),
            timeout=ARP_WINDOW + 20,
        )  # fmt: skip
        if rc == 0:
            return [str(mac).lower() for mac, _ in json.loads(out)["responders"]]
        if rc != NOT_PERMITTED:
            raise _ArpNotAsked(f"{client}: the ARP probe for {vip} failed: {err.strip()}")
        # This login has no packet socket; arping usually carries its own capability.
        rc, out, err = await self.run(
            client,
            # -b: iputils switches to unicast after the first reply, so a second responder
            # would be asked only once; broadcasting every request asks every host each time.
            ("arping", "-b", "-c", str(ARPING_COUNT), "-I", iface, vip),
            timeout=ARPING_COUNT + 20,
        )
        if rc not in (0, 1) or (rc == 1 and "reply from" not in out and err.strip()):
            raise _ArpNotAsked(f"{client}: arping {vip} failed: {err.strip()}")
        return parse_arping(out)

    async def arp(
        self,
        client: str,
        vip: str,
        director: str | None,
        asking: asyncio.Task[list[str]],
        traffic_done: asyncio.Event,
    ) -> ArpCheck:
        """Judge the ARP probe `asking` (started with the phase, it runs while the traffic
        flows) and the client's neighbour entry, read once the traffic is over."""
        iface = self.iface(client)

        async def neighbour() -> str | None:
            await traffic_done.wait()
            rc, out, _ = await self.run(
                client, ("ip", "-j", "neigh", "show", "to", vip, "dev", iface)
            )
            return parse_ip_neigh(out) if rc == 0 else None

        macs, neigh = await asyncio.gather(asking, neighbour(), return_exceptions=True)
        responders: list[ArpResponder] = []
        asked = False
        if isinstance(macs, list):
            asked = True
            responders = [ArpResponder(mac=mac, host=self.seen.mac_owner(mac)) for mac in macs]
        elif isinstance(macs, _ArpNotAsked):
            self.fail("arp", client, str(macs))
        elif isinstance(macs, TransportError):
            self.fail("arp", client, f"{client} cannot probe ARP: {macs}")
        else:
            raise macs
        neighbour_mac: str | None = None
        if isinstance(neigh, TransportError):
            if asked:
                self.fail("arp", client, f"{client} cannot probe ARP: {neigh}")
        elif isinstance(neigh, BaseException):
            raise neigh
        else:
            neighbour_mac = neigh
        expected = self.seen.host_mac(director) if director else None
        check = ArpCheck(
            client=client,
            vip=vip,
            director=director,
            expected_mac=expected,
            responders=tuple(responders),
            neighbour_mac=neighbour_mac,
            neighbour_host=self.seen.mac_owner(neighbour_mac) if neighbour_mac else None,
        )
        self.failures.extend(judge_arp(check, asked=asked))
        return check


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
    v = _Verifier(desired, transport, facts, clusters)
    if not v.cfg.enabled:
        return VerificationResult(ok=True, revision=desired.revision,
                                  notes=("verification is disabled in shoal.toml",))
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
    await v.settle_vrrp()
    # The ARP probes need nothing from the inspection, and their window is the longest wait of
    # the phase: they start first and are judged once the hosts are known.
    asking = {
        (client, vip): asyncio.create_task(v.arp_responders(client, vip))
        for vip in sorted({svc.vip for cl in v.clusters.values() for svc in cl.services})
        for client in clients
    }
    try:
        return await _verify(v, clients, hosts, asking, started)
    finally:
        for task in asking.values():
            task.cancel()
        # Each task is awaited once more: cancelled, done or failed, none is left pending.
        await asyncio.gather(*asking.values(), return_exceptions=True)


async def _verify(
    v: _Verifier,
    clients: tuple[str, ...],
    hosts: set[str],
    asking: Mapping[tuple[str, str], asyncio.Task[list[str]]],
    started: float,
) -> VerificationResult:
    await v.inspect(hosts)

    jobs: list[Job] = []
    vips: dict[tuple[str, str], str | None] = {}  # (cluster, vip) -> active director
    for cname, cl in v.clusters.items():
        for svc in cl.services:
            key = (cname, svc.vip)
            if key not in vips:
                vips[key] = v.active_director(cname, svc.vip)
            director = vips[key]
            if not any(rs.weight > 0 for rs in svc.real_servers):
                v.notes.append(f"{svc.name} {svc.vip}:{svc.port}: no real server has weight > 0")
                continue
            for client in clients:
                caddr = v.addr(client)
                job = Job(cname, svc, client, director, {})
                for rs in svc.real_servers:
                    job.rs_counters[rs.host] = (
                        rs.host,
                        v.table_for(rs.host).add(to_vip(caddr, svc, syn_only=True)),
                    )
                if director is not None:
                    tab = v.table_for(director)
                    job.fwd_counter = tab.add(to_vip(caddr, svc, syn_only=False))
                    job.ret_counter = tab.add(from_vip(caddr, svc))
                    for rs in svc.real_servers:
                        mac = v.seen.host_mac(rs.host)
                        if mac is not None:
                            # Which real server a reply came from: its own source MAC.
                            job.ret_by_rs[rs.host] = tab.add(
                                f"ether saddr {mac} " + from_vip(caddr, svc)
                            )
                jobs.append(job)

    services: list[ServiceTraffic] = []
    reachable_clients = [c for c in clients if c in v.links]
    traffic_done = asyncio.Event()

    async def traffic() -> None:
        # The tables go as soon as the last counters are read, while the ARP checks read the
        # clients' neighbour entries.
        try:
            await v.install_tables()
            services.extend(
                await v.all_traffic([j for j in jobs if j.client in reachable_clients])
            )
        finally:
            traffic_done.set()
            await v.remove_tables()
        for t in services:
            v.failures.extend(judge_traffic(t))

    try:
        arp_vips = {vip: director for (_, vip), director in sorted(vips.items())}
        _, arps = await asyncio.gather(
            traffic(),
            asyncio.gather(
                *(
                    v.arp(client, vip, director, asking[client, vip], traffic_done)
                    for vip, director in arp_vips.items()
                    for client in reachable_clients
                )
            ),
        )
        arp_checks = list(arps)
    finally:
        # Only what is still installed (cancelled, or an error above).
        await v.remove_tables()
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
