"""The traffic probe's bookkeeping (pure): what each job counts, and its results over the rounds.

A `Job` is one service probed from one client, with the counters that see its packets (on each
real server, and on the active director). A `Tally` sums the probe's reports over the rounds,
keeps the last counter readings, says which weighted real servers got nothing so far (another
round, `reconciler.verify.traffic` decides) and gives the `ServiceTraffic` that is judged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.desired.models import Service
from reconciler.verify.result import RealServerTraffic, ServiceTraffic


@dataclass
class Job:
    """One service probed from one client, and the counters that see its packets."""

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
class Tally:
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

    def received(self, job: Job) -> dict[str, int | None]:
        """Connections counted on each real server (cumulative: the tables live all phase)."""
        if not self.probed:
            return {}
        return {rs: self.counter(host, c) for rs, (host, c) in job.rs_counters.items()}

    def missing(self, job: Job) -> list[str]:
        """Weighted real servers that got nothing so far (by their counter, else by replies)."""
        received = self.received(job)
        return [
            rs.host
            for rs in job.svc.real_servers
            if rs.weight > 0
            and (received.get(rs.host) if received.get(rs.host) is not None
                 else self.answered_by.get(rs.host, 0)) == 0
        ]  # fmt: skip

    def traffic(self, job: Job) -> ServiceTraffic:
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
