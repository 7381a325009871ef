"""The directors' keepalived.conf files combined into clusters.

Each `vrrp_instance` is a cluster; the file whose instance is MASTER (or, without a state, has
the higher priority) is the primary director's. The virtual servers of a cluster are those whose
VIP the instance carries. Two directors' files must agree on every virtual server they both
have (keepalived lets them drift apart, as Piranha's hand-copied lvs.cf did): a difference is an
error naming both places, since only the operator knows which side is right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reconciler.errors import ConfigIssue
from reconciler.importer.keepalived_read import DirectorConf, VrrpInstance
from reconciler.importer.sites import (
    Dropped,
    ImportedCluster,
    ImportedDirector,
    ImportedService,
    ImportedSite,
    ImportedVrrp,
    ImportSourceInvalid,
    issue_at,
)

_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class DirectorFile:
    """One director's keepalived.conf as read, and the inventory name the operator gave it."""

    conf: DirectorConf
    host: str | None = None


def cluster_name(instance: str) -> str:
    """A shoal name from a VRRP instance name (`VI_1` -> `vi_1`).

    shoal names a cluster's instance `VI_<cluster>`: an instance already named so keeps its
    name (`VI_web` -> cluster `web`), since keepalived takes a renamed instance for a new one
    (its VIPs released and taken again) and the first plan would rewrite the file for it."""
    rest = instance.removeprefix("VI_")
    if rest != instance and rest and not _NAME_CHARS.search(rest) and rest == rest.lower() \
            and rest[0].isalpha():  # fmt: skip
        return rest
    name = _NAME_CHARS.sub("-", instance).strip("-.").lower()
    return name or "imported"


def _is_primary(inst: VrrpInstance, others: list[VrrpInstance]) -> bool:
    if inst.state in ("MASTER", "BACKUP"):
        return inst.state == "MASTER"
    return all((inst.priority or 0) > (o.priority or 0) for o in others)


def _same(a: ImportedService, b: ImportedService) -> bool:
    def key(s: ImportedService) -> object:
        return (s.scheduler, s.persistence, s.check,
                sorted((r.address, r.weight) for r in s.real_servers))  # fmt: skip

    return key(a) == key(b)


def site_from_keepalived(files: list[DirectorFile]) -> ImportedSite:
    site = ImportedSite()
    issues: list[ConfigIssue] = []
    # (instance name, router id) -> [(file, instance)]
    by_instance: dict[tuple[str, int | None], list[tuple[DirectorFile, VrrpInstance]]] = {}
    for f in files:
        site.dropped += f.conf.dropped
        site.notes += f.conf.notes
        for inst in f.conf.instances:
            by_instance.setdefault((inst.name, inst.virtual_router_id), []).append((f, inst))
    claimed: set[tuple[str, int, str]] = set()
    for (name, vrid), members in sorted(by_instance.items(), key=lambda kv: kv[0][0]):
        first = members[0][1]
        if vrid is None:
            issues.append(issue_at(first.origin, f"vrrp_instance {name} has no virtual_router_id"))
            continue
        instances = [inst for _, inst in members]
        roles = [_is_primary(inst, [o for o in instances if o is not inst]) for inst in instances]
        if roles.count(True) != 1 or len(members) > 2:
            where = ", ".join(str(inst.origin) for inst in instances)
            issues.append(issue_at(first.origin, f"vrrp_instance {name} needs exactly one "
                                   f"MASTER among at most two directors ({where})"))  # fmt: skip
            continue
        cluster = ImportedCluster(name=cluster_name(name), backend="keepalived",
                                  origin=first.origin)  # fmt: skip
        primary_inst = instances[roles.index(True)]
        backup_inst = next((i for i, r in zip(instances, roles, strict=True) if not r), None)
        for (f, inst), is_primary in sorted(zip(members, roles, strict=True),
                                            key=lambda m: not m[1]):  # fmt: skip
            cluster.directors.append(ImportedDirector(
                role="primary" if is_primary else "backup", origin=inst.origin,
                name=f.host or f.conf.router_id, interface=inst.interface,
            ))  # fmt: skip
        p_prio = primary_inst.priority or 100
        b_prio = backup_inst.priority if backup_inst and backup_inst.priority else p_prio // 2
        cluster.vrrp = ImportedVrrp(virtual_router_id=vrid, priority_primary=p_prio,
                                    priority_backup=b_prio,
                                    advert_interval=primary_inst.advert_interval,
                                    origin=primary_inst.origin)  # fmt: skip
        vips = {vip for inst in instances for vip, _ in inst.vips}
        seen: dict[tuple[str, int, str], ImportedService] = {}
        for f, _inst in members:
            for svc in f.conf.services:
                if svc.vip not in vips:
                    continue
                key = (svc.vip, svc.port, svc.protocol)
                claimed.add(key)
                if key not in seen:
                    seen[key] = svc
                    cluster.services.append(svc)
                elif not _same(seen[key], svc):
                    issues.append(issue_at(svc.origin, f"virtual_server {svc.vip} {svc.port} "
                                           f"differs from {seen[key].origin} (scheduler, "
                                           "persistence, checks or real servers): make the "
                                           "directors' files agree first"))  # fmt: skip
        served = {s.vip for s in cluster.services}
        for inst in instances:
            for vip, origin in inst.vips:
                if vip not in served:
                    site.dropped.append(Dropped(origin, vip, "a VIP without a virtual server "
                                                "(shoal holds VIPs of services only)"))  # fmt: skip
        site.clusters.append(cluster)
    for f in files:
        for svc in f.conf.services:
            if (svc.vip, svc.port, svc.protocol) not in claimed:
                site.dropped.append(Dropped(svc.origin, f"virtual_server {svc.vip} {svc.port}",
                                            "no vrrp_instance carries its VIP, so no director "
                                            "would hold it"))  # fmt: skip
    if issues:
        raise ImportSourceInvalid(issues)
    return site
