"""An imported site written as a config repository: shoal.toml, inventory.toml, clusters/*.toml.

Hosts are named from the operator's inventory when it lists their address, else from what the
source calls them (lvs.cf server names, the VRRP router id), else from their role or address
(`lvs1`, `rs-10-0-0-21`). A director known by name only must be in that inventory, since
keepalived.conf does not say its own address. Every dropped construct is listed at the top of
its cluster file as a comment, with the place it was read. The text is built here; the caller
validates it with the ordinary loader before anything lands on disk.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.desired.models import Host, Inventory, is_valid_name
from reconciler.errors import ConfigIssue
from reconciler.importer.sites import (
    ImportedCluster,
    ImportedService,
    ImportedSite,
    ImportSourceInvalid,
    issue_at,
)

SETTINGS_TOML = """\
# Written by `shoal import`. Every key has a default; see "Configuration reference" in README.md.
approval = "manual"   # every plan waits for a person's approval
drift = "report"      # changes found on hosts between commits are reported, not healed
"""
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string for the characters names and addresses hold.
    return json.dumps(value, ensure_ascii=False)


def _name_from(text: str) -> str | None:
    name = _NOT_NAME.sub("-", text).strip("-.")
    return name if name and is_valid_name(name) else None


@dataclass(slots=True)
class HostBook:
    """Every host the repository will list: name -> Host; addresses -> names."""

    known: Inventory | None
    hosts: dict[str, Host] = field(default_factory=dict)
    by_address: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, host in (self.known.hosts.items() if self.known else ()):
            self.hosts[name] = host
            for address in host.addresses:
                self.by_address[address] = name

    def by_role(self, address: str, wanted: str | None, fallback: str,
                interface: str | None = None) -> str:  # fmt: skip
        """The name of the host at `address`, adding it under `wanted` or `fallback`."""
        if address in self.by_address:
            return self.by_address[address]
        name = _name_from(wanted) if wanted else None
        if name is None or name in self.hosts:
            name = fallback
        while name in self.hosts:
            name += "-2"
        self.hosts[name] = Host(name=name, address=address, interface=interface or "eth0")
        self.by_address[address] = name
        return name

    def inventory_toml(self, adopting: Mapping[str, list[str]] | None = None) -> str:
        """The inventory; `adopting` names the hosts whose corrections need `adopt`, and why."""
        lines = ["# Written by `shoal import`; names are yours to change (and in clusters/)."]
        for name in sorted(self.hosts):
            h = self.hosts[name]
            lines += ["", f"[hosts.{name}]", f"address = {toml_string(h.address)}"]
            if h.address6 is not None:
                lines.append(f"address6 = {toml_string(h.address6)}")
            lines.append(f"interface = {toml_string(h.interface)}")
            if h.prefix != 24:
                lines.append(f"prefix = {h.prefix}")
            if h.prefix6 != 64:
                lines.append(f"prefix6 = {h.prefix6}")
            if h.user != "root":
                lines.append(f"user = {toml_string(h.user)}")
            if h.port != 22:
                lines.append(f"port = {h.port}")
            why = (adopting or {}).get(name)
            if why or h.adopt:
                # The correction removes what was made by hand, which shoal does only on a host
                # that adopts; adopting also records what matches this repository as shoal's.
                lines += [f"# adopt: {w}" for w in why or ()]
                lines.append("adopt = true")
        return "\n".join(lines) + "\n"


def _service_names(cluster: ImportedCluster) -> list[str]:
    names: list[str] = []
    for svc in cluster.services:
        base = (_name_from(svc.name) if svc.name else None) or f"{svc.protocol}-{svc.port}"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def _service_toml(svc: ImportedService, name: str, book: HostBook) -> list[str]:
    c = svc.check
    check = f'{{ type = "{c.type}", interval = {c.interval}, timeout = {c.timeout} }}'
    if c.type == "http":
        check = (f'{{ type = "http", path = {toml_string(c.path)}, expect = {c.expect}, '
                 f"interval = {c.interval}, timeout = {c.timeout} }}")  # fmt: skip
    elif c.type == "none":
        check = '{ type = "none" }'
    lines = [
        "",
        f"[[service]]  # {svc.origin}",
        f"name = {toml_string(name)}",
        f"vip = {toml_string(svc.vip)}",
        f"port = {svc.port}",
        f'protocol = "{svc.protocol}"',
        f'scheduler = "{svc.scheduler}"',
    ]
    if svc.persistence:
        lines.append(f"persistence = {svc.persistence}")
    lines.append(f"check = {check}")
    for rs in svc.real_servers:
        host = book.by_role(rs.address, rs.name, "rs-" + _NOT_NAME.sub("-", rs.address))
        lines += ["", f"  [[service.real_server]]  # {rs.origin}", f"  host = {toml_string(host)}",
                  f"  weight = {rs.weight}"]  # fmt: skip
    return lines


def render_site(
    site: ImportedSite, known: Inventory | None, arp_method: str, backend: str | None = None
) -> dict[str, str]:
    """path in the repository -> text, for every file but known_hosts."""
    book = HostBook(known)
    issues: list[ConfigIssue] = []
    files = {"shoal.toml": SETTINGS_TOML}
    for cluster in site.clusters:
        directors: list[str] = []
        for i, d in enumerate(cluster.directors, start=1):
            if d.address is not None:
                directors.append(book.by_role(d.address, None, f"lvs{i}", d.interface))
            elif d.name is not None and d.name in book.hosts:
                directors.append(d.name)
            else:
                what = f"director {d.name!r}" if d.name else f"the {d.role} director"
                issues.append(issue_at(d.origin, f"{what} ({d.role}): its address is unknown; "
                                       "list it in the inventory given with --inventory (and "
                                       "name the file NAME=FILE)"))  # fmt: skip
        head = [f"# Imported by `shoal import` from {cluster.origin.file}."]
        dropped = [d for d in site.dropped if d.origin.file in _files_of(cluster, site)]
        if dropped:
            head.append("# Not imported (shoal cannot represent these yet):")
            head += [f"#   {d}" for d in dropped]
        found = [f for f in site.findings if f.host in _hosts_of(cluster, directors, book)]
        if found:
            head.append("# Known-bad patterns on the hosts; the first plan corrects each one:")
            head += [f"#   {f}" for f in found]
        lines = [*head, "", "[cluster]", f"name = {toml_string(cluster.name)}",
                 "directors = [" + ", ".join(toml_string(d) for d in directors) + "]",
                 f'director = "{backend or cluster.backend}"',
                 f'arp_method = "{cluster.arp_method or arp_method}"']  # fmt: skip
        if cluster.vrrp is not None:
            v = cluster.vrrp
            lines += ["", f"[cluster.vrrp]  # {v.origin}",
                      f"virtual_router_id = {v.virtual_router_id}",
                      f"priority_primary = {v.priority_primary}",
                      f"priority_backup = {v.priority_backup}",
                      f"advert_interval = {v.advert_interval}"]  # fmt: skip
        for svc, name in zip(cluster.services, _service_names(cluster), strict=True):
            lines += _service_toml(svc, name, book)
        files[f"clusters/{cluster.name}.toml"] = "\n".join(lines) + "\n"
    if issues:
        raise ImportSourceInvalid(issues)
    adopting: dict[str, list[str]] = {}
    for f in site.findings:
        if f.adopt:
            adopting.setdefault(book.by_address.get(f.host, f.host), []).append(f.pattern)
    files["inventory.toml"] = book.inventory_toml(adopting)
    return files


def _hosts_of(cluster: ImportedCluster, directors: list[str], book: HostBook) -> set[str]:
    """Inventory names of a cluster's directors and real servers."""
    names = set(directors)
    for svc in cluster.services:
        for rs in svc.real_servers:
            names.add(rs.name if rs.name in book.hosts else book.by_address.get(rs.address, ""))
    return names


def _files_of(cluster: ImportedCluster, site: ImportedSite) -> set[str]:
    """The source files a cluster was read from (for its list of dropped constructs)."""
    files = {cluster.origin.file, *(d.origin.file for d in cluster.directors)}
    if len(site.clusters) == 1:
        files |= {d.origin.file for d in site.dropped}
    return files
