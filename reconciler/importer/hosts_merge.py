"""`--from-hosts` with `--keepalived-conf`: the files' VRRP settings and checks, the hosts' rest.

A keepalived director's hosts facts show its IPVS table and who holds the VIPs, not its VRRP
instance or its checkers: those come from its keepalived.conf. Each keepalived cluster the hosts
show must be a cluster of the files (same directors, by inventory name) and agree with it:
the primary (the file's MASTER holds the VIPs), every virtual service (scheduler, persistence)
and every real server and weight. A difference is an error naming the host's entry and the
file's line: keepalived's checker may have taken a real server out, or the file on disk is not
the one running, and only the operator knows which. The ARP method is the hosts'.
"""

from __future__ import annotations

from reconciler.desired.endpoint import endpoint
from reconciler.errors import ConfigIssue
from reconciler.importer.sites import (
    ImportedCluster,
    ImportedService,
    ImportedSite,
    ImportSourceInvalid,
    issue_at,
)

ServiceKey = tuple[str, int, str]


def _key(s: ImportedService) -> ServiceKey:
    return (s.vip, s.port, s.protocol)


def _directors(c: ImportedCluster) -> list[str | None]:
    return [d.name for d in c.directors]


def _compare(file_svc: ImportedService, host_svc: ImportedService) -> list[str]:
    out = []
    if file_svc.scheduler != host_svc.scheduler:
        out.append(f"scheduler {host_svc.scheduler} on the host, {file_svc.scheduler} in the file")
    if file_svc.persistence != host_svc.persistence:
        out.append(f"persistence {host_svc.persistence} on the host, {file_svc.persistence} in "
                   "the file")  # fmt: skip
    mine = {r.address: r.weight for r in host_svc.real_servers}
    theirs = {r.address: r.weight for r in file_svc.real_servers}
    for address in sorted(set(mine) | set(theirs)):
        if address not in mine:
            out.append(f"real server {address} is in the file but not in the host's IPVS table "
                       "(its check failing takes it out: fix it, or take it out of the file)")
        elif address not in theirs:
            out.append(f"real server {address} is in the host's IPVS table but not in the file")
        elif mine[address] != theirs[address]:
            out.append(f"real server {address} has weight {mine[address]} on the host, "
                       f"{theirs[address]} in the file")  # fmt: skip
    return out


def _merge_one(hosts: ImportedCluster, files: list[ImportedCluster],
               issues: list[ConfigIssue]) -> list[ImportedCluster]:  # fmt: skip
    """The file clusters standing for `hosts`, checked against it, with its ARP method."""
    primary = hosts.directors[0].name
    ours = [f for f in files if set(_directors(f)) == set(_directors(hosts))]
    host_svcs = {_key(s): s for s in hosts.services}
    file_keys = {_key(s) for f in ours for s in f.services}
    mine = [f for f in ours if {_key(s) for s in f.services} & set(host_svcs)]
    if not mine:
        issues.append(ConfigIssue(str(hosts.origin), (
            f"{primary} runs keepalived: its VRRP settings and checks are in its keepalived.conf, "
            f"which the hosts do not show: give each director's file with --keepalived-conf "
            f"{primary}=FILE"
        )))  # fmt: skip
        return []
    for key in sorted(set(host_svcs) - file_keys):
        s = host_svcs[key]
        issues.append(ConfigIssue(str(s.origin), f"{key[2]} {endpoint(key[0], key[1])} runs on "
                                  "the host "
                                  "but no keepalived.conf given has it"))  # fmt: skip
    for f in mine:
        if f.directors[0].name != primary:
            issues.append(issue_at(f.directors[0].origin, (
                f"the MASTER here is {f.directors[0].name}, but {primary} holds the VIPs: "
                "fail back (or fix the file) before importing"
            )))  # fmt: skip
        for svc in f.services:
            host_svc = host_svcs.get(_key(svc))
            if host_svc is None:
                issues.append(issue_at(svc.origin, f"virtual_server {svc.vip} {svc.port} is not "
                                       f"in {primary}'s IPVS table: keepalived is not running "
                                       "this file"))  # fmt: skip
                continue
            for why in _compare(svc, host_svc):
                issues.append(issue_at(svc.origin, f"virtual_server {svc.vip} {svc.port} "
                                       f"differs from {host_svc.origin}: {why}"))  # fmt: skip
        f.arp_method = hosts.arp_method
    return mine


def merge_keepalived(files: ImportedSite, hosts: ImportedSite) -> ImportedSite:
    """The hosts' site with its keepalived clusters replaced by the files' (checked alike)."""
    issues: list[ConfigIssue] = []
    site = ImportedSite(dropped=files.dropped + hosts.dropped, notes=files.notes + hosts.notes,
                        findings=list(hosts.findings))  # fmt: skip
    used: list[ImportedCluster] = []
    for cluster in hosts.clusters:
        if cluster.backend != "keepalived":
            site.clusters.append(cluster)
            continue
        merged = _merge_one(cluster, files.clusters, issues)
        used += merged
        site.clusters += [m for m in merged if m not in site.clusters]
    for f in files.clusters:
        if f not in used:
            names = ", ".join(str(n) for n in _directors(f))
            issues.append(issue_at(f.origin, f"the hosts show no keepalived director running "
                                   f"this instance (directors {names})"))  # fmt: skip
    if issues:
        raise ImportSourceInvalid(issues)
    return site
