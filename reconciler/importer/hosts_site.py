"""`shoal import --from-hosts`: the live hosts' facts read into an ImportedSite.

Directors are the hosts with IPVS services (`ipvsadm -Sn`) or shoal's DSR table (`netdev
shoal_dsr`); directors that share a VIP are one group, whose primary is the one holding the VIP
on an interface. The backend is keepalived where keepalived runs or its config is there, else
ipvsadm (IPVS without keepalived), else nftables. Services come from the primary's table (the
backup's must agree), real servers by address from the inventory, and each real server's ARP
method from its own facts (`reconciler.importer.hosts_arp`); a group whose services use
different methods becomes one cluster per method. Only Direct Routing (`-g`) is shoal's:
NAT and tunnel entries, fwmark and SCTP services and IPVS options shoal does not write are
`Dropped`, each with its host and entry.

Every place is "HOST: SOURCE:LINE" (`lvs1: ipvsadm -Sn:3`, counting the lines as ipvsadm saves
them), so the written files say where each object was seen. Any host whose facts could not be
read fails the import, naming it and the fact: it might be a director, or a real server whose
ARP method decides what the first plan removes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from reconciler.desired.endpoint import endpoint
from reconciler.desired.models import Inventory
from reconciler.errors import ConfigIssue
from reconciler.facts.hostfacts import HostFacts, IpvsTable, NftRuleset
from reconciler.facts.parsers.nft_dsr import Unreadable, decode_table
from reconciler.facts.script import KEEPALIVED_CONF
from reconciler.importer.hosts_arp import (
    Endpoint,
    HostFactUnknown,
    boot_finding,
    need,
    read_arp_method,
)
from reconciler.importer.hosts_ipvs import drain_sysctl_finding
from reconciler.importer.sites import (
    Dropped,
    ImportedCluster,
    ImportedDirector,
    ImportedRealServer,
    ImportedService,
    ImportedSite,
    ImportSourceInvalid,
    Origin,
)
from reconciler.plan.planner import unreachable_reason
from states.nft_dsr_model import FAMILY, TABLE

Backend = Literal["keepalived", "ipvsadm", "nftables"]
ServiceKey = tuple[str, int, str]  # vip, port, protocol
IPVS_SAVE = "ipvsadm -Sn"
DSR_LIST = f"nft list table {FAMILY} {TABLE}"


@dataclass(slots=True)
class DirectorView:
    """What one director serves, as its own facts say."""

    name: str
    backend: Backend
    services: dict[ServiceKey, ImportedService] = field(default_factory=dict)
    holds: set[str] = field(default_factory=set)  # VIPs on an interface other than lo


@dataclass(slots=True)
class _Reading:
    inventory: Inventory
    facts: Mapping[str, HostFacts]
    site: ImportedSite = field(default_factory=ImportedSite)
    issues: list[ConfigIssue] = field(default_factory=list)
    by_address: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, host in self.inventory.hosts.items():
            for address in host.addresses:
                self.by_address[address] = name

    def bad(self, where: str, message: str) -> None:
        self.issues.append(ConfigIssue(where, message))


def _is_keepalived(hf: HostFacts) -> bool:
    info = need(hf, "keepalived")
    files = need(hf, "files")
    assert isinstance(files, dict)
    conf = files.get(KEEPALIVED_CONF)
    return bool(getattr(info, "running", False)) or bool(conf is not None and conf.exists)


def _ipvs_services(r: _Reading, name: str, table: IpvsTable) -> dict[ServiceKey, ImportedService]:
    out: dict[ServiceKey, ImportedService] = {}
    line = 0
    for svc in table.services:
        line += 1
        origin = Origin(f"{name}: {IPVS_SAVE}", line)
        dests = [d for d in table.destinations if d.service_key == svc.key]
        what = (f"fwmark {svc.fwmark}" if svc.protocol == "fwmark"
                else f"{svc.protocol} {endpoint(svc.address, svc.port)}")  # fmt: skip
        unsupported = []
        if svc.protocol not in ("tcp", "udp"):
            unsupported.append(f"{svc.protocol} virtual service (shoal has tcp and udp)")
        elif svc.family == "inet6":
            # A real server's IPv6 VIP is kept quiet by other means than ARP (neighbour
            # discovery), which this reading does not know yet: import it by hand.
            unsupported.append("IPv6 virtual service (--from-hosts reads IPv4 ARP methods only)")
        if svc.flags:
            unsupported.append(f"scheduler flags -b {','.join(svc.flags)}")
        if svc.pe:
            unsupported.append(f"persistence engine --pe {svc.pe}")
        if svc.one_packet:
            unsupported.append("one-packet scheduling -o")
        if svc.persistence and svc.netmask not in (None, "255.255.255.255", "128"):
            unsupported.append(f"persistence netmask -M {svc.netmask}")
        if unsupported:
            for why in unsupported:
                r.site.dropped.append(Dropped(origin, f"virtual service {what}", why))
            line += len(dests)
            continue
        imported = ImportedService(vip=svc.address, port=svc.port, protocol=svc.protocol,
                                   origin=origin, scheduler=svc.scheduler,
                                   persistence=svc.persistence or 0)  # fmt: skip
        for d in dests:
            line += 1
            at = Origin(f"{name}: {IPVS_SAVE}", line)
            entry = f"real server {endpoint(d.address, d.port)} of {what}"
            if d.forward != "route":
                r.site.dropped.append(Dropped(at, entry, f"{d.forward} forwarding (shoal does "
                                              "Direct Routing, -g, only)"))  # fmt: skip
                continue
            imported.real_servers.append(
                ImportedRealServer(address=d.address, port=d.port, weight=d.weight, origin=at))
        out[(svc.address, svc.port, svc.protocol)] = imported
    return out


def _dsr_services(r: _Reading, name: str, nft: NftRuleset) -> dict[ServiceKey, ImportedService]:
    table = nft.table(FAMILY, TABLE)
    if table is None:
        return {}
    try:
        dsr = decode_table(table.canonical_json, r.inventory.hosts[name].interface)
    except (Unreadable, ValueError, KeyError, TypeError, IndexError) as exc:
        r.bad(name, f"table {FAMILY} {TABLE} is not in the shape shoal writes ({exc}); "
              "import it by hand")  # fmt: skip
        return {}
    macs: dict[str, str] = {}
    for host, hf in r.facts.items():
        iface = r.inventory.hosts[host].interface
        for i in hf.interfaces.value or ():
            if i.name == iface and i.mac:
                macs[i.mac.lower()] = host
    out: dict[ServiceKey, ImportedService] = {}
    for n, svc in enumerate(dsr.services, start=1):
        origin = Origin(f"{name}: {DSR_LIST}", n)
        # Buckets give weights up to their gcd (what the table needs); affinity has no seconds.
        imported = ImportedService(vip=svc.vip, port=svc.port, protocol=svc.protocol,
                                   origin=origin, persistence=300 if svc.client_affinity else 0)
        if svc.client_affinity:
            r.site.notes.append(f"{origin}: client affinity read as persistence = 300 (the "
                                "DSR table has no timeout; any value > 0 is the same table)")
        for b in svc.buckets:
            member = macs.get(b.mac)
            if member is None:
                r.bad(str(origin), f"bucket MAC {b.mac} is no inventory host's (on its "
                      "interface): add the real server to the inventory")  # fmt: skip
                continue
            imported.real_servers.append(ImportedRealServer(
                address=r.inventory.hosts[member].address, port=svc.port,
                weight=b.high - b.low + 1, origin=origin, name=member))  # fmt: skip
        out[(svc.vip, svc.port, svc.protocol)] = imported
    if out:
        r.site.notes.append(f"{DSR_LIST}: a real server drained to weight 0 holds no bucket "
                            "in it, so it cannot be seen: add it by hand if it belongs")
    return out


def _director(r: _Reading, name: str, hf: HostFacts) -> DirectorView | None:
    ipvs = need(hf, "ipvs")
    assert isinstance(ipvs, IpvsTable)
    nft = need(hf, "nft", "nft")
    interfaces = need(hf, "interfaces")
    assert isinstance(interfaces, tuple)
    services: dict[ServiceKey, ImportedService] = {}
    backend: Backend
    if ipvs.services:
        backend = "keepalived" if _is_keepalived(hf) else "ipvsadm"
        services = _ipvs_services(r, name, ipvs)
    elif isinstance(nft, NftRuleset) and nft.table(FAMILY, TABLE) is not None:
        backend = "nftables"
        services = _dsr_services(r, name, nft)
    else:
        return None
    vips = {k[0] for k in services}
    holds = {a.address for i in interfaces if i.name != "lo" for a in i.addresses
             if a.address in vips}  # fmt: skip
    return DirectorView(name, backend, services, holds)


def _same(a: ImportedService, b: ImportedService) -> bool:
    def key(s: ImportedService) -> object:
        return (s.scheduler, s.persistence, sorted((x.address, x.weight) for x in s.real_servers))

    return key(a) == key(b)


def _groups(views: list[DirectorView]) -> list[list[DirectorView]]:
    """Directors that share a VIP, transitively."""
    groups: list[list[DirectorView]] = []
    for view in views:
        vips = {k[0] for k in view.services}
        joined = [g for g in groups if any(vips & {k[0] for k in o.services} for o in g)]
        merged = [view] + [o for g in joined for o in g]
        groups = [g for g in groups if g not in joined] + [merged]
    return [sorted(g, key=lambda v: v.name) for g in groups]


def _primary(r: _Reading, group: list[DirectorView]) -> DirectorView | None:
    names = ", ".join(v.name for v in group)
    vips = sorted({k[0] for v in group for k in v.services})
    holders = [v for v in group if v.holds]
    if len(holders) != 1:
        state = "none of them holds" if not holders else "more than one holds"
        r.bad(names, f"directors {names}: {state} a VIP ({', '.join(vips)}) on an interface, so "
              "which one is primary cannot be read; shoal keeps every VIP of a cluster on its "
              "primary")  # fmt: skip
        return None
    missing = sorted(set(vips) - holders[0].holds)
    if missing:
        r.bad(holders[0].name, f"holds only some of its VIPs (not {', '.join(missing)}): shoal "
              "keeps every VIP of a cluster on one primary director")  # fmt: skip
        return None
    return holders[0]


def _check_agree(r: _Reading, primary: DirectorView, other: DirectorView) -> None:
    for key in sorted(set(primary.services) | set(other.services)):
        a, b = primary.services.get(key), other.services.get(key)
        vip, port, proto = key
        if a is None or b is None:
            has, lacks = (b, primary) if a is None else (a, other)
            assert has is not None
            r.bad(str(has.origin), f"{proto} {endpoint(vip, port)} is not on {lacks.name}: "
                  "make the "
                  "directors' tables agree first")  # fmt: skip
        elif not _same(a, b):
            r.bad(str(b.origin), f"{proto} {endpoint(vip, port)} differs from {a.origin} "
                  "(scheduler, "
                  "persistence, real servers or weights): make the directors agree first")


def site_from_hosts(inventory: Inventory, facts: Mapping[str, HostFacts],
                    cluster_name: str = "lvs") -> ImportedSite:  # fmt: skip
    """The site the hosts run; ImportSourceInvalid naming every host and fact that stops it."""
    r = _Reading(inventory, facts)
    views: list[DirectorView] = []
    for name in sorted(inventory.hosts):
        hf = facts.get(name)
        why = "not gathered" if hf is None else unreachable_reason(hf)
        if hf is None or why is not None:
            r.bad(name, f"facts unreadable ({why}): whether it is a director or a real server "
                  "cannot be told, so nothing is imported")  # fmt: skip
            continue
        try:
            view = _director(r, name, hf)
        except HostFactUnknown as exc:
            r.bad(exc.host, f"{exc.fact} unknown ({exc.reason}): whether it is a director "
                  "cannot be told, so nothing is imported")  # fmt: skip
            continue
        if view is not None:
            views.append(view)
    if not r.issues and not views:
        r.bad("shoal import", "no host has IPVS services or the table netdev shoal_dsr: "
              "there is no director to import")  # fmt: skip
    clusters: list[tuple[ImportedCluster, str | None]] = []
    for group in _groups(views) if not r.issues else []:
        clusters += _group_clusters(r, group)
    _name_clusters([c for c, _ in clusters], cluster_name)
    if r.issues:
        raise ImportSourceInvalid(r.issues)
    r.site.clusters += [c for c, _ in clusters]
    r.site.notes = list(dict.fromkeys(r.site.notes))  # both directors say the same
    return r.site


def _group_clusters(
    r: _Reading, group: list[DirectorView]
) -> list[tuple[ImportedCluster, str | None]]:
    names = ", ".join(v.name for v in group)
    if len(group) > 2:
        r.bad(names, f"{len(group)} directors share VIPs ({names}): a shoal cluster has one or two")
        return []
    if len({v.backend for v in group}) > 1:
        each = ", ".join(f"{v.name}: {v.backend}" for v in group)
        r.bad(names, f"the directors of one set of VIPs run different backends ({each})")
        return []
    primary = _primary(r, group)
    if primary is None:
        return []
    backup = next((v for v in group if v is not primary), None)
    if backup is not None:
        _check_agree(r, primary, backup)
    if primary.backend != "nftables":
        for member in group:
            drain = drain_sysctl_finding(member.name, r.facts[member.name])
            if drain is not None:
                r.site.findings.append(drain)
    if primary.backend != "keepalived":  # keepalived.conf itself is keepalived's boot form
        vips = sorted({k[0] for k in primary.services})
        for member in group:
            found = boot_finding(member.name, r.facts[member.name], vips,
                                 "its virtual services and the VIP")  # fmt: skip
            if found is not None:
                r.site.findings.append(found)
    # Real servers by name, their endpoints, and each one's method.
    served: dict[str, list[Endpoint]] = {}
    for svc in primary.services.values():
        for rs in svc.real_servers:
            host = rs.name or r.by_address.get(rs.address)
            if host is None:
                r.bad(str(rs.origin), f"real server {rs.address} is no inventory host: add it "
                      "(with its key in known_hosts) so its ARP method can be read")  # fmt: skip
                continue
            rs.name = host
            served.setdefault(host, []).append(Endpoint(svc.vip, svc.port, svc.protocol))
    methods: dict[str, str] = {}
    for host, endpoints in sorted(served.items()):
        try:
            reading = read_arp_method(host, r.inventory.hosts[host], r.facts[host], endpoints)
        except HostFactUnknown as exc:
            r.bad(exc.host, f"{exc.fact} unknown ({exc.reason}): its ARP method cannot be read")
            continue
        if reading.problem is not None:
            r.bad(host, reading.problem)
            continue
        assert reading.method is not None
        methods[host] = reading.method
        r.site.findings += [f for f in reading.findings if f not in r.site.findings]
    by_method: dict[str | None, ImportedCluster] = {}
    # A service without real servers has no method: it joins the first cluster of its group.
    ordered = sorted(primary.services, key=lambda k: (not primary.services[k].real_servers, k))
    for key in ordered:
        svc = primary.services[key]
        # A real server whose method could not be read is an issue already.
        used = sorted({methods[n] for rs in svc.real_servers if (n := rs.name or "") in methods})
        if len(used) > 1:
            r.bad(str(svc.origin), f"{key[2]} {key[0]}:{key[1]}: its real servers use different "
                  f"ARP methods ({', '.join(used)}); shoal uses one per cluster")  # fmt: skip
            continue
        method = used[0] if used else next(iter(by_method), None)
        cluster = by_method.get(method)
        if cluster is None:
            cluster = ImportedCluster(name="", backend=primary.backend, origin=svc.origin,
                                      arp_method=method)  # fmt: skip
            for role, view in (("primary", primary), ("backup", backup)):
                if view is not None:
                    cluster.directors.append(ImportedDirector(
                        role=role, origin=next(iter(view.services.values())).origin,  # type: ignore[arg-type]
                        name=view.name, interface=r.inventory.hosts[view.name].interface))
            by_method[method] = cluster
        cluster.services.append(svc)
    return [(c, m) for m, c in by_method.items()]


def _name_clusters(clusters: list[ImportedCluster], base: str) -> None:
    if len(clusters) == 1:
        clusters[0].name = base
        return
    taken: set[str] = set()
    for c in clusters:
        name = f"{base}-{c.arp_method or 'none'}"
        n = 2
        while name in taken:
            name, n = f"{base}-{c.arp_method or 'none'}-{n}", n + 1
        taken.add(name)
        c.name = name


def needs_keepalived_files(site: ImportedSite) -> list[ImportedCluster]:
    """The clusters whose directors run keepalived (VRRP settings and checks are in its files)."""
    return [c for c in site.clusters if c.backend == "keepalived"]
