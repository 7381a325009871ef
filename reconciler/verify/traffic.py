"""The traffic step of a verification: requests through every VIP, counted where they land.

Each counted host gets one probe table (`reconciler.verify.counters`); the client runs the
traffic probe (`reconciler.verify.probe_traffic`) in rounds, and after each round every host's
counters are read once. The tables are removed when the step ends, whatever happens. What the
sums mean is `reconciler.verify.judge`'s to say.

An IPv6 service is probed from the client's IPv6 address (`Host.address_of` the VIP's family);
a client without one cannot probe it, which is a setup failure named once per job, and that
job sends nothing (it reports no requests).
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
from collections.abc import Sequence
from typing import Any

from reconciler.desired.models import Service
from reconciler.errors import TransportError
from reconciler.facts.parsers.nft_counters import parse_nft_counters
from reconciler.verify.counters import CounterTable, from_vip, to_vip
from reconciler.verify.probe_traffic import probe_source
from reconciler.verify.result import ServiceTraffic
from reconciler.verify.session import Session
from reconciler.verify.tally import Job, Tally

# How many probe rounds at most before a weighted real server that got nothing is reported;
# a hashing director spreads by source port, so one unlucky round is possible, three are not.
MAX_ROUNDS = 3
MAX_REQUESTS = 5000
# Requests the client keeps in flight: a round of 30 costs about 8 request times, not 30. Few
# enough for a small accept backlog (Python's socketserver listens with 5).
PROBE_CONCURRENCY = 4


class Traffic:
    """The probe tables of one verification, and the rounds of requests they count."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.run_id = secrets.token_hex(4)
        self.tables: dict[str, CounterTable] = {}
        # Jobs whose client has no address of their VIP's family (by id: a Job is not hashable).
        self.unprobeable: set[int] = set()

    def table_for(self, host: str) -> CounterTable:
        if host not in self.tables:
            self.tables[host] = CounterTable(
                host, self.s.iface(host), f"shoal_verify_{self.run_id}"
            )
        return self.tables[host]

    def job(self, cluster: str, svc: Service, client: str, director: str | None) -> Job:
        """`svc` probed from `client`, with its counters added to the hosts' tables."""
        job = Job(cluster, svc, client, director, {})
        caddr = self.s.desired.inventory.hosts[client].address_of(svc.family)
        if caddr is None:
            self.unprobeable.add(id(job))
            self.s.fail("setup", client, f"{client} has no IPv{svc.family} address to probe "
                        f"{cluster}/{svc.name} ({svc.vip}) from")  # fmt: skip
            return job
        for rs in svc.real_servers:
            job.rs_counters[rs.host] = (
                rs.host,
                self.table_for(rs.host).add(to_vip(caddr, svc, syn_only=True)),
            )
        if director is not None:
            tab = self.table_for(director)
            job.fwd_counter = tab.add(to_vip(caddr, svc, syn_only=False))
            job.ret_counter = tab.add(from_vip(caddr, svc))
            for rs in svc.real_servers:
                mac = self.s.seen.host_mac(rs.host)
                if mac is not None:
                    # Which real server a reply came from: its own source MAC.
                    job.ret_by_rs[rs.host] = tab.add(f"ether saddr {mac} " + from_vip(caddr, svc))
        return job

    async def install_tables(self) -> None:
        async def one(tab: CounterTable) -> None:
            try:
                rc, _, err = await self.s.run(tab.host, ("nft", "-f", "-"), input=tab.ruleset())
            except TransportError as exc:
                self.s.notes.append(f"{tab.host}: cannot count arrivals: {exc}")
                return
            if rc == 0:
                tab.installed = True
            else:
                self.s.notes.append(f"{tab.host}: cannot count arrivals (nft): {err.strip()}")

        await asyncio.gather(*(one(t) for t in self.tables.values()))

    async def read_counters(self, host: str) -> dict[str, int] | None:
        tab = self.tables.get(host)
        if tab is None or not tab.installed:
            return None
        try:
            rc, out, _ = await self.s.run(
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
                rc, _, err = await self.s.run(
                    tab.host, ("nft", "delete", "table", "netdev", tab.table)
                )
            except TransportError as exc:
                self.s.notes.append(f"{tab.host}: probe table {tab.table} left behind: {exc}")
                return
            if rc != 0:
                self.s.notes.append(f"{tab.host}: probe table {tab.table} left behind: {err}")

        await asyncio.gather(*(one(t) for t in self.tables.values() if t.installed))

    def request_count(self, svc: Service) -> int:
        weights = [rs.weight for rs in svc.real_servers if rs.weight > 0]
        # Enough that the lightest server expects `requests_per_server` of them.
        total = self.s.cfg.requests_per_server * math.ceil(sum(weights) / min(weights))
        return min(total, MAX_REQUESTS)

    async def probe(self, client: str, svc: Service, count: int) -> dict[str, Any] | None:
        argv = [
            "python3",
            "-",
            "--vip",
            svc.vip,
            "--port",
            str(svc.port),
            "--protocol",
            svc.protocol,
            "--count",
            str(count),
            "--timeout",
            str(self.s.cfg.timeout),
            "--max-failures",
            str(max(3, count // 10)),
            "--deadline",
            str(self.deadline(count)),
            "--concurrency",
            str(min(PROBE_CONCURRENCY, count)),
        ]
        if svc.protocol == "tcp" and svc.check.type == "http":
            argv += ["--http", svc.check.path]
        try:
            rc, out, err = await self.s.run(
                client, argv, input=probe_source(), timeout=self.deadline(count) + 30
            )
        except TransportError as exc:
            self.s.fail("probe", client, f"{client} cannot send requests: {exc}")
            return None
        if rc != 0:
            self.s.fail("probe", client, f"{client}: the probe failed: {err.strip()[-400:]}")
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
        pending = [i for i, job in enumerate(jobs) if id(job) not in self.unprobeable]
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
