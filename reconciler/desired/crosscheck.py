"""Checks that span files of a config repository (the per-file rules live in the models).

Input is whatever part of each file validated on its own, so one broken service does not hide an
unknown host in the next one. Every finding is reported through a callback with the file and the
concrete key path, which the loader turns into file:line:col.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from reconciler.desired.endpoint import service_endpoint
from reconciler.desired.models import ClusterHeader, ExtraState, Host, Service, Settings, quoted
from reconciler.desired.tomlpos import KeyPath

INVENTORY_FILE = "inventory.toml"
SETTINGS_FILE = "shoal.toml"

Report = Callable[[str, KeyPath, str], None]


@dataclass(frozen=True, slots=True)
class ClusterParts:
    """The parts of one cluster file that validated (with their index in the file)."""

    file: str
    stem: str
    header: ClusterHeader | None
    services: tuple[tuple[int, Service], ...]
    states: tuple[tuple[int, ExtraState], ...]
    # Every string naming a host, read from the raw file, so that an unknown host is reported
    # even when something else in the same service or state is invalid.
    host_refs: tuple[tuple[KeyPath, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RepoParts:
    settings: Settings | None
    host_names: frozenset[str] | None  # every [hosts.<name>] key; None: no inventory to read
    hosts: Mapping[str, Host]  # the hosts that validated
    clusters: tuple[ClusterParts, ...]


def _unknown(name: str) -> str:
    return f"unknown host {quoted(name)}"


def cross_check(repo: RepoParts, report: Report) -> None:
    """Report every cross-file problem of `repo`."""
    _check_inventory(repo, report)
    if repo.settings is not None and repo.host_names is not None:
        for i, client in enumerate(repo.settings.verify.clients):
            if client not in repo.host_names:
                report(SETTINGS_FILE, ("verify", "clients", i), _unknown(client))
    for cluster in repo.clusters:
        _check_cluster_hosts(repo, cluster, report)
        _check_states(cluster, report)
    _check_cluster_names(repo, report)
    _check_vips(repo, report)
    _check_arp_methods(repo, report)
    _check_vrrp_ids(repo, report)
    _check_sync(repo, report)
    _check_keepalived_checks(repo, report)


def _check_inventory(repo: RepoParts, report: Report) -> None:
    owner: dict[str, str] = {}
    for name, host in repo.hosts.items():
        for key, address in (("address", host.address), ("address6", host.address6)):
            if address is None:
                continue
            if address in owner:
                report(
                    INVENTORY_FILE,
                    ("hosts", name, key),
                    f"address {address} is also the address of host {quoted(owner[address])}",
                )
            else:
                owner[address] = name


def _family_words(family: int) -> tuple[str, str]:
    """("IPv6", "address6") for 6: how a message names the family and the key that gives it."""
    return ("IPv6", "address6") if family == 6 else ("IPv4", "address")


def _check_cluster_hosts(repo: RepoParts, cluster: ClusterParts, report: Report) -> None:
    for ref_path, host in cluster.host_refs:
        if repo.host_names is not None and host not in repo.host_names:
            report(cluster.file, ref_path, _unknown(host))
    directors = cluster.header.directors if cluster.header is not None else ()
    address_owner = {a: name for name, host in repo.hosts.items() for a in host.addresses}
    for si, service in cluster.services:
        if service.vip in address_owner:
            report(
                cluster.file,
                ("service", si, "vip"),
                f"VIP {service.vip} is the address of host {quoted(address_owner[service.vip])}",
            )
        family, key = _family_words(service.family)
        # IPVS forwards within one family: every director and real server of the service needs
        # an address of the VIP's family (checks and the director's own traffic use it).
        for di, director in enumerate(directors):
            d = repo.hosts.get(director)
            if d is not None and d.address_of(service.family) is None:
                report(
                    cluster.file,
                    ("cluster", "directors", di),
                    f"director {quoted(director)} has no {family} address for the {family} VIP "
                    f"{service.vip} of service {quoted(service.name)} (set {key} in "
                    f"[hosts.{director}])",
                )
        for ri, real in enumerate(service.real_servers):
            path: KeyPath = ("service", si, "real_server", ri, "host")
            if real.host in directors:
                report(
                    cluster.file,
                    path,
                    f"host {quoted(real.host)} is a director of this cluster, "
                    "so it cannot also be one of its real servers",
                )
                continue
            h = repo.hosts.get(real.host)
            if h is not None and h.address_of(service.family) is None:
                report(
                    cluster.file,
                    path,
                    f"real server {quoted(real.host)} has no {family} address for the {family} "
                    f"VIP {service.vip} (set {key} in [hosts.{real.host}]; one service has one "
                    "address family)",
                )


def _check_states(cluster: ClusterParts, report: Report) -> None:
    ids = {state.id for _, state in cluster.states}
    for k, state in cluster.states:
        for kind in ("require", "watch", "onchanges"):
            for j, target in enumerate(getattr(state, kind)):
                if target not in ids:
                    report(
                        cluster.file,
                        ("state", k, kind, j),
                        f"no [[state]] with id {quoted(target)} in this file",
                    )


def _check_cluster_names(repo: RepoParts, report: Report) -> None:
    # A file whose cluster carries its own name owns that name; any other file using the name
    # gets one message (already used), otherwise a name that differs from the file's is reported.
    owner = {c.header.name: c.file for c in repo.clusters if c.header and c.header.name == c.stem}
    for cluster in repo.clusters:
        if cluster.header is None or cluster.header.name == cluster.stem:
            continue
        name = cluster.header.name
        if name in owner:
            report(
                cluster.file,
                ("cluster", "name"),
                f"cluster name {quoted(name)} is already used by {owner[name]} "
                f"(this file's cluster must be named {quoted(cluster.stem)})",
            )
        else:
            owner[name] = cluster.file
            report(
                cluster.file,
                ("cluster", "name"),
                f"cluster name {quoted(name)} differs from the file name "
                f"(expected {quoted(cluster.stem)})",
            )


def _check_vips(repo: RepoParts, report: Report) -> None:
    endpoints: dict[tuple[str, int, str], tuple[str, str]] = {}
    vip_owner: dict[str, tuple[ClusterParts, ClusterHeader]] = {}
    for cluster in repo.clusters:
        for si, service in cluster.services:
            key = (service.vip, service.port, service.protocol)
            if key in endpoints:
                other_file, other_service = endpoints[key]
                report(
                    cluster.file,
                    ("service", si, "vip"),
                    f"{service_endpoint(service.vip, service.port, service.protocol)} is already "
                    "served by "
                    f"service {quoted(other_service)} in {other_file}",
                )
            else:
                endpoints[key] = (cluster.file, service.name)
            header = cluster.header
            if header is None:
                continue
            owner = vip_owner.setdefault(service.vip, (cluster, header))
            other_cluster, other_header = owner
            if other_cluster is cluster:
                continue
            if other_header.directors != header.directors:
                report(
                    cluster.file,
                    ("service", si, "vip"),
                    f"VIP {service.vip} is also used by cluster {quoted(other_header.name)} "
                    f"({other_cluster.file}) with other directors "
                    f"({', '.join(other_header.directors)})",
                )
            elif other_header.director != header.director:
                report(
                    cluster.file,
                    ("service", si, "vip"),
                    f"VIP {service.vip} is also used by cluster {quoted(other_header.name)} "
                    f"({other_cluster.file}) with director backend {quoted(other_header.director)}",
                )


def _check_arp_methods(repo: RepoParts, report: Report) -> None:
    # A real server holds each VIP with one ARP method; two methods on one host fight each other.
    method_of: dict[str, tuple[str, str]] = {}
    for cluster in repo.clusters:
        if cluster.header is None:
            continue
        method = cluster.header.arp_method
        reported: set[str] = set()
        for si, service in cluster.services:
            for ri, real in enumerate(service.real_servers):
                first = method_of.setdefault(real.host, (cluster.file, method))
                if first[1] != method and real.host not in reported:
                    reported.add(real.host)
                    report(
                        cluster.file,
                        ("service", si, "real_server", ri, "host"),
                        f"host {quoted(real.host)} is also a real server in {first[0]} with "
                        f"arp_method {quoted(first[1])}, and this cluster uses {quoted(method)}",
                    )


def _check_vrrp_ids(repo: RepoParts, report: Report) -> None:
    # Two keepalived instances on one director with the same virtual_router_id collide on the wire.
    seen: dict[tuple[str, int], str] = {}
    for cluster in repo.clusters:
        header = cluster.header
        if header is None or header.director != "keepalived":
            continue
        vrid = header.vrrp.virtual_router_id
        for director in header.directors:
            other = seen.setdefault((director, vrid), cluster.file)
            if other != cluster.file:
                report(
                    cluster.file,
                    ("cluster", "vrrp", "virtual_router_id"),
                    f"virtual_router_id {vrid} is also used on director {quoted(director)} "
                    f"by {other}",
                )
                break


def _check_sync(repo: RepoParts, report: Report) -> None:
    # keepalived runs one IPVS sync daemon (a global_defs setting) for one VRRP instance.
    owner: dict[str, str] = {}
    for cluster in repo.clusters:
        header = cluster.header
        if header is None or not header.sync.enabled:
            continue
        path: KeyPath = ("cluster", "sync", "enabled")
        if header.director == "ipvsadm":
            report(cluster.file, path, "connection sync is not supported on the ipvsadm "
                   "backend yet; use the keepalived backend, or set enabled = false")
            continue
        if header.director != "keepalived":
            continue  # nftables: nothing to run; the plan says what a failover keeps
        for director in header.directors:
            other = owner.setdefault(director, cluster.file)
            if other != cluster.file:
                report(cluster.file, path, f"director {quoted(director)} already runs the "
                       f"connection sync daemon for {other}; keepalived runs one")
                break


def _check_keepalived_checks(repo: RepoParts, report: Report) -> None:
    # keepalived's DNS_CHECK asks and wants an answer, but cannot compare it with an address;
    # shoal-healthd (the ipvsadm and nftables backends) can.
    for cluster in repo.clusters:
        if cluster.header is None or cluster.header.director != "keepalived":
            continue
        for si, svc in cluster.services:
            if svc.check.answer is not None:
                report(cluster.file, ("service", si, "check", "answer"),
                       "keepalived's DNS_CHECK cannot check the answer; leave answer out on "
                       "the keepalived backend")  # fmt: skip
