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

The result is a typed `VerificationResult`; a failure names the host at fault where one is known.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from reconciler.desired.models import Desired, Service
from reconciler.errors import TransportError
from reconciler.facts.hostfacts import HostFacts
from reconciler.transport.protocol import Transport
from reconciler.verify.probe_arp import NOT_PERMITTED, arp_probe_source
from reconciler.verify.probe_traffic import probe_source

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
_ARP_REPLY_RE = re.compile(r"reply from (\d+\.\d+\.\d+\.\d+) \[([0-9A-Fa-f:]{17})\]")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_PROBE_PRIORITY = -300  # before any director chain (the DSR backend's runs at 101 and ends in fwd)


# --- the transport this phase needs ---------------------------------------------------------------


# --- the result -----------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


CheckKind = Literal["setup", "probe", "traffic", "director", "arp", "neighbour"]


class VerificationFailure(_Out):
    check: CheckKind
    host: str | None = Field(description="the host at fault, where one is known")
    message: str

    def __str__(self) -> str:
        return self.message


class RealServerTraffic(_Out):
    host: str
    weight: int
    received: int | None = Field(description="connections counted on the host; None = unknown")
    answered: int = Field(default=0, description="replies whose body named this host")
    via_director: int | None = Field(
        default=None, description="its replies seen by the director (must be 0); None = unknown"
    )


class ServiceTraffic(_Out):
    cluster: str
    service: str
    vip: str
    port: int
    protocol: str
    client: str
    director: str | None
    requests: int
    ok: int
    failed: int
    errors: dict[str, int] = {}
    rounds: int
    real_servers: tuple[RealServerTraffic, ...]
    forward_packets: int | None = Field(description="client -> VIP packets seen by the director")
    return_packets: int | None = Field(description="VIP -> client packets seen by the director")

    @property
    def distribution(self) -> dict[str, int]:
        """Requests per real server (counted on the host, or by the replies' bodies)."""
        return {
            rs.host: rs.received if rs.received is not None else rs.answered
            for rs in self.real_servers
        }


class ArpResponder(_Out):
    mac: str
    host: str | None


class ArpCheck(_Out):
    client: str
    vip: str
    director: str | None = Field(description="the active director: it holds the VIP")
    expected_mac: str | None
    responders: tuple[ArpResponder, ...]
    neighbour_mac: str | None
    neighbour_host: str | None


class VerificationResult(_Out):
    ok: bool
    revision: str = ""
    clients: tuple[str, ...] = ()
    services: tuple[ServiceTraffic, ...] = ()
    arp: tuple[ArpCheck, ...] = ()
    failures: tuple[VerificationFailure, ...] = ()
    notes: tuple[str, ...] = ()
    elapsed: float = 0.0

    def distribution(self) -> dict[str, dict[str, int]]:
        """`vip:port/proto (client)` -> real server -> requests."""
        return {
            f"{s.vip}:{s.port}/{s.protocol} ({s.client})": s.distribution for s in self.services
        }


# --- what the hosts look like right now -----------------------------------------------------------


@dataclass(frozen=True)
class _Link:
    name: str
    mac: str | None
    addresses: tuple[str, ...]


def parse_ip_addr_json(text: str) -> list[_Link]:
    """`ip -j addr show` -> interfaces with MAC and IPv4 addresses."""
    links = []
    for item in json.loads(text or "[]"):
        addrs = tuple(
            str(a["local"]) for a in item.get("addr_info", []) if a.get("family") == "inet"
        )
        # Only a well-formed MAC is kept: it goes into nft rules on other hosts.
        mac = str(item.get("address") or "").lower()
        links.append(_Link(str(item["ifname"]), mac if _MAC_RE.match(mac) else None, addrs))
    return links


def parse_arping(text: str) -> list[str]:
    """iputils `arping` output -> the replying MACs (lower case), first-seen order, no repeats."""
    macs: list[str] = []
    for m in _ARP_REPLY_RE.finditer(text):
        mac = m.group(2).lower()
        if mac not in macs:
            macs.append(mac)
    return macs


def parse_neigh_json(text: str) -> str | None:
    """`ip -j neigh show to VIP dev IF` -> the entry's MAC, or None (absent/incomplete)."""
    for item in json.loads(text or "[]"):
        mac = item.get("lladdr")
        if mac:
            return str(mac).lower()
    return None


def parse_counters_json(text: str) -> dict[str, int]:
    """`nft -j list counters table ...` -> counter name -> packets."""
    out: dict[str, int] = {}
    for item in json.loads(text).get("nftables", []):
        counter = item.get("counter")
        if counter is not None:
            out[str(counter["name"])] = int(counter["packets"])
    return out


# --- the probe counter tables ---------------------------------------------------------------------


@dataclass
class _CounterTable:
    host: str
    device: str
    table: str
    rules: list[tuple[str, str]] = field(default_factory=list)  # (counter name, match)
    installed: bool = False

    def add(self, match: str) -> str:
        name = f"c{len(self.rules)}"
        self.rules.append((name, match))
        return name

    def ruleset(self) -> str:
        # Every value here is validated by the models (IPv4 addresses, ports, interface names).
        lines = [f"table netdev {self.table} {{"]
        lines += [f"\tcounter {name} {{ }}" for name, _ in self.rules]
        lines += [
            "\tchain probe {",
            f'\t\ttype filter hook ingress device "{self.device}" priority {_PROBE_PRIORITY};'
            " policy accept;",
        ]
        lines += [f'\t\t{match} counter name "{name}"' for name, match in self.rules]
        lines += ["\t}", "}", ""]
        return "\n".join(lines)


def _to_vip(client_addr: str, svc: Service, *, syn_only: bool) -> str:
    base = f"ip saddr {client_addr} ip daddr {svc.vip} {svc.protocol} dport {svc.port}"
    if svc.protocol == "tcp" and syn_only:
        # One connection = one SYN; counting SYNs counts requests, not packets.
        return base + " tcp flags & (syn | ack) == syn"
    return base


def _from_vip(client_addr: str, svc: Service) -> str:
    return f"ip saddr {svc.vip} ip daddr {client_addr} {svc.protocol} sport {svc.port}"


# --- the phase ------------------------------------------------------------------------------------


class _ArpNotAsked(Exception):
    """The client could not send its ARP probe (the message says why)."""


@dataclass
class _Job:
    cluster: str
    svc: Service
    client: str
    director: str | None
    rs_counters: dict[str, tuple[str, str]]  # real server -> (host, counter)
    fwd_counter: str | None = None
    ret_counter: str | None = None
    ret_by_rs: dict[str, str] = field(default_factory=dict)  # real server -> director counter

    def counter_hosts(self) -> set[str]:
        hosts = {h for h, _ in self.rs_counters.values()}
        if self.director is not None:
            hosts.add(self.director)
        return hosts


@dataclass
class _Tally:
    """One job's probe results summed over its rounds, and the last counter readings."""

    requests: int = 0
    ok: int = 0
    failed: int = 0
    rounds: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    answered_by: dict[str, int] = field(default_factory=dict)
    counters: dict[str, dict[str, int] | None] = field(default_factory=dict)  # host -> counters
    probed: bool = False

    def add(self, res: Mapping[str, Any]) -> None:
        self.probed = True
        self.requests += int(res["requested"])
        self.ok += int(res["ok"])
        self.failed += int(res["failed"])
        for k, v in res["errors"].items():
            self.errors[k] = self.errors.get(k, 0) + int(v)
        for k, v in res["answered_by"].items():
            self.answered_by[k] = self.answered_by.get(k, 0) + int(v)

    def counter(self, host: str | None, name: str | None) -> int | None:
        found = self.counters.get(host or "")
        return found.get(name or "") if found is not None else None

    def received(self, job: _Job) -> dict[str, int | None]:
        """Connections counted on each real server (cumulative: the tables live all phase)."""
        if not self.probed:
            return {}
        return {rs: self.counter(host, c) for rs, (host, c) in job.rs_counters.items()}

    def missing(self, job: _Job) -> list[str]:
        """Weighted real servers that got nothing so far (by their counter, else by replies)."""
        received = self.received(job)
        return [
            rs.host
            for rs in job.svc.real_servers
            if rs.weight > 0
            and (received.get(rs.host) if received.get(rs.host) is not None
                 else self.answered_by.get(rs.host, 0)) == 0
        ]  # fmt: skip

    def traffic(self, job: _Job) -> ServiceTraffic:
        svc = job.svc
        received = self.received(job)
        return ServiceTraffic(
            cluster=job.cluster,
            service=svc.name,
            vip=svc.vip,
            port=svc.port,
            protocol=svc.protocol,
            client=job.client,
            director=job.director,
            requests=self.requests,
            ok=self.ok,
            failed=self.failed,
            errors=self.errors,
            rounds=self.rounds,
            real_servers=tuple(
                RealServerTraffic(
                    host=rs.host,
                    weight=rs.weight,
                    received=received.get(rs.host),
                    answered=self.answered_by.get(rs.host, 0) if self.probed else 0,
                    via_director=self.counter(job.director, job.ret_by_rs.get(rs.host)),
                )
                for rs in svc.real_servers
            ),
            forward_packets=self.counter(job.director, job.fwd_counter),
            return_packets=self.counter(job.director, job.ret_counter),
        )


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
        self.links: dict[str, list[_Link]] = {}
        self.run_id = secrets.token_hex(4)
        self.tables: dict[str, _CounterTable] = {}

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

    def mac_owner(self, mac: str) -> str | None:
        for host, links in self.links.items():
            if any(link.mac == mac for link in links):
                return host
        for host, hf in self.facts.items():
            if hf.interfaces.known and any(
                (i.mac or "").lower() == mac for i in hf.interfaces.value or ()
            ):
                return host
        return None

    def host_mac(self, host: str) -> str | None:
        for link in self.links.get(host, []):
            if link.name == self.iface(host):
                return link.mac
        return None

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
            self.links[host] = parse_ip_addr_json(out)

        await asyncio.gather(*(one(h) for h in sorted(set(hosts))))

    def active_director(self, cluster: str, vip: str) -> str | None:
        header = self.clusters[cluster].cluster
        holders = [
            d
            for d in header.directors
            if any(
                link.name == self.iface(d) and vip in link.addresses
                for link in self.links.get(d, [])
            )
        ]
        if len(holders) == 1:
            return holders[0]
        if not holders:
            unknown = [d for d in header.directors if d not in self.links]
            if not unknown:
                self.fail(
                    "director",
                    header.primary,
                    f"no director of cluster {cluster} holds {vip} "
                    f"(checked {', '.join(header.directors)})",
                )
        else:
            self.fail(
                "director",
                holders[-1],
                f"{' and '.join(holders)} {'both' if len(holders) == 2 else 'all'} hold {vip}: "
                "only the active director may",
            )
        return None

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
            links = parse_ip_addr_json(out) if rc == 0 else []
            return {a for link in links if link.name == self.iface(host) for a in link.addresses}

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

    def table_for(self, host: str) -> _CounterTable:
        if host not in self.tables:
            self.tables[host] = _CounterTable(
                host, self.iface(host), f"shoal_verify_{self.run_id}"
            )
        return self.tables[host]

    async def install_tables(self) -> None:
        async def one(tab: _CounterTable) -> None:
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
        return parse_counters_json(out) if rc == 0 else None

    async def remove_tables(self) -> None:
        """Delete every installed probe table; safe to call again (each is deleted once)."""

        async def one(tab: _CounterTable) -> None:
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

    async def all_traffic(self, jobs: Sequence[_Job]) -> list[ServiceTraffic]:
        """Probe rounds for every job at once; after each round every host's counters are read
        once. A job gets another round (up to MAX_ROUNDS) while a weighted real server got
        nothing and no request failed."""
        tallies = [_Tally() for _ in jobs]
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

    def judge_traffic(self, t: ServiceTraffic) -> None:
        where = f"{t.service} {t.vip}:{t.port}/{t.protocol}"
        if t.failed:
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(t.errors.items()))
            self.fail(
                "traffic",
                None,
                f"{t.client}: {t.failed} of {t.requests} requests to {where} failed ({detail})",
            )
        # Replies name their server (HTTP bodies): a host that received requests and answered
        # none is the one the failed requests went to (its service is down, or, with the
        # redirect method, its REDIRECT rule is gone and the VIP's packets die there).
        # With no request answered at all, every host that received one answered none too.
        identified = any(rs.answered for rs in t.real_servers) or t.ok == 0
        for rs in t.real_servers:
            got = rs.received if rs.received is not None else rs.answered
            if t.failed and identified and rs.received and not rs.answered:
                self.fail(
                    "traffic",
                    rs.host,
                    f"{rs.host} received {rs.received} requests to {where} from {t.client} "
                    "and answered none",
                )
            if rs.weight > 0 and got == 0 and t.ok:
                self.fail(
                    "traffic",
                    rs.host,
                    f"{rs.host} (weight {rs.weight}) received none of {t.requests} requests to "
                    f"{where} from {t.client}",
                )
            if rs.weight == 0 and got:
                self.fail(
                    "traffic",
                    rs.host,
                    f"{rs.host} has weight 0 but received {got} requests to {where}",
                )
        named = 0
        for rs in t.real_servers:
            if rs.via_director:
                named += rs.via_director
                self.fail(
                    "traffic",
                    rs.host,
                    f"{rs.host} sends its replies for {where} through the director {t.director} "
                    f"({rs.via_director} packets) instead of straight to {t.client}",
                )
        if t.director is not None and t.return_packets and t.return_packets > named:
            self.fail(
                "traffic",
                t.director,
                f"replies from {where} to {t.client} passed through the director {t.director} "
                f"({t.return_packets} packets): the real servers do not answer directly",
            )
        if t.director is not None and t.forward_packets == 0 and t.ok:
            self.fail(
                "traffic",
                None,
                f"requests from {t.client} to {where} did not pass through the active director "
                f"{t.director}",
            )

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
            return parse_neigh_json(out) if rc == 0 else None

        macs, neigh = await asyncio.gather(asking, neighbour(), return_exceptions=True)
        responders: list[ArpResponder] = []
        asked = False
        if isinstance(macs, list):
            asked = True
            responders = [ArpResponder(mac=mac, host=self.mac_owner(mac)) for mac in macs]
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
        expected = self.host_mac(director) if director else None
        check = ArpCheck(
            client=client,
            vip=vip,
            director=director,
            expected_mac=expected,
            responders=tuple(responders),
            neighbour_mac=neighbour_mac,
            neighbour_host=self.mac_owner(neighbour_mac) if neighbour_mac else None,
        )
        if asked and not responders:
            self.fail(
                "arp", director, f"nobody answers ARP for {vip} (asked from {client}): VIP is down"
            )
        for r in responders:
            if expected is None or r.mac != expected:
                who = r.host or f"an unknown host ({r.mac})"
                if r.host is not None and r.host == director:
                    continue
                self.fail("arp", r.host, f"{who} answers ARP for {vip}")
        if expected is not None and check.neighbour_mac not in (None, expected):
            who = check.neighbour_host or "an unknown host"
            self.fail(
                "neighbour",
                check.neighbour_host,
                f"{client}'s neighbour entry for {vip} points at {who} "
                f"({check.neighbour_mac}), not at the active director {director}",
            )
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

    jobs: list[_Job] = []
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
                job = _Job(cname, svc, client, director, {})
                for rs in svc.real_servers:
                    job.rs_counters[rs.host] = (
                        rs.host,
                        v.table_for(rs.host).add(_to_vip(caddr, svc, syn_only=True)),
                    )
                if director is not None:
                    tab = v.table_for(director)
                    job.fwd_counter = tab.add(_to_vip(caddr, svc, syn_only=False))
                    job.ret_counter = tab.add(_from_vip(caddr, svc))
                    for rs in svc.real_servers:
                        mac = v.host_mac(rs.host)
                        if mac is not None:
                            # Which real server a reply came from: its own source MAC.
                            job.ret_by_rs[rs.host] = tab.add(
                                f"ether saddr {mac} " + _from_vip(caddr, svc)
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
            v.judge_traffic(t)

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
