"""Which clusters are planned together, and which hosts each group covers (pure).

Clusters that share a host form one unit: one plan, one lock set, so that two plans never fight
over one host. Inventory hosts in no cluster ("orphans") go to exactly one unit, so that what
shoal left there is removed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from reconciler.desired.models import Desired
from reconciler.server.store.records import PlanRecord


def cluster_hosts(desired: Desired, name: str) -> set[str]:
    """Every host a cluster changes: directors, real servers, hosts of its [[state]]s."""
    cluster = desired.clusters[name]
    hosts = set(cluster.cluster.directors)
    for service in cluster.services:
        hosts.update(rs.host for rs in service.real_servers)
    for state in cluster.states:
        hosts.update(state.hosts)
    return hosts


def cluster_units(desired: Desired) -> list[tuple[str, ...]]:
    """Clusters grouped so that clusters sharing a host are in one unit (union-find)."""
    parent = {name: name for name in desired.clusters}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    owner: dict[str, str] = {}
    for name in sorted(desired.clusters):
        for host in cluster_hosts(desired, name):
            if host in owner:
                parent[find(name)] = find(owner[host])
            else:
                owner[host] = name
    groups: dict[str, list[str]] = {}
    for name in sorted(desired.clusters):
        groups.setdefault(find(name), []).append(name)
    return sorted(tuple(sorted(g)) for g in groups.values())


def unit_key(unit: Iterable[str]) -> str:
    return ",".join(sorted(unit))


def unit_of(record: PlanRecord) -> tuple[str, ...]:
    return tuple(record.cluster.split(","))


def restrict(desired: Desired, unit: Sequence[str]) -> Desired:
    """The desired state with only the unit's clusters (the planner sees nothing else)."""
    return desired.model_copy(update={"clusters": {c: desired.clusters[c] for c in unit}})


def orphan_hosts(desired: Desired) -> set[str]:
    """Inventory hosts in no cluster: gathered too, so what shoal left there is removed."""
    used: set[str] = set()
    for name in desired.clusters:
        used |= cluster_hosts(desired, name)
    return set(desired.inventory.hosts) - used


def unit_hosts(desired: Desired, unit: Sequence[str], *, with_orphans: bool) -> list[str]:
    """The hosts a unit's plan covers; orphans go to exactly one unit (the first)."""
    hosts: set[str] = set()
    for name in unit:
        hosts |= cluster_hosts(desired, name)
    if with_orphans:
        hosts |= orphan_hosts(desired)
    return sorted(hosts)


def derived_plan_id(base_id: str, generation: int) -> str:
    """A fresh id for a plan whose base id was already used (applied, stale...) before.

    The planner's id hashes revision, digests and steps; the same inputs come back when a host
    returns to an earlier state. A new record needs a new id, so that an approval of the old
    one can never apply the new one.
    """
    return hashlib.sha256(f"{base_id}/{generation}".encode()).hexdigest()[:16]
