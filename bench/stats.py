"""Samples of one measured action and their summaries (pure)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from bench.sshlog import PerHost


@dataclass(frozen=True, slots=True)
class Sample:
    wall: float
    cpu: float
    ok: bool  # the tool succeeded and the hosts were verified afterwards
    ssh: PerHost | None = None  # per real-server host
    ssh_director: PerHost | None = None  # shoal only: the director it also gathers
    note: str = ""


@dataclass(slots=True)
class Series:
    tool: str  # "shoal", "ansible", "pyinfra", "floor"
    action: str  # "converge", "noop"
    hosts: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def valid(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def verified(self) -> bool:
        return bool(self.samples) and all(s.ok for s in self.samples)

    def wall(self, how: str = "median") -> float | None:
        return _pick([s.wall for s in self.valid], how)

    def cpu(self, how: str = "median") -> float | None:
        return _pick([s.cpu for s in self.valid], how)

    def ssh(self) -> PerHost | None:
        seen = [s.ssh for s in self.samples if s.ssh is not None]
        if not seen:
            return None
        return PerHost(
            connections_min=min(p.connections_min for p in seen),
            connections_max=max(p.connections_max for p in seen),
            sessions_min=min(p.sessions_min for p in seen),
            sessions_max=max(p.sessions_max for p in seen),
            hosts=seen[0].hosts,
        )


def _pick(values: list[float], how: str) -> float | None:
    if not values:
        return None
    return min(values) if how == "min" else statistics.median(values)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator
