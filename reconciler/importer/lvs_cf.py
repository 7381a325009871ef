"""Piranha's lvs.cf (lvs.cf(5)) read as one cluster: its directors, virtual services, servers.

The format: `key = value` lines, `virtual NAME {` and `server NAME {` blocks closed by `}`,
`#` comments. Read: `primary`, `backup` with `backup_active`, `network` (only `direct` is
imported: NAT and tunnelling forward differently), `keepalive` (the check interval), and per
virtual service `active`, `address` (the VIP and the director's interface), `port`, `protocol`,
`scheduler`, `persistent`, `pmask`, `timeout`; per server `address`, `active`, `weight`, `port`.
An inactive virtual service or server is not running, so it is not imported (and said so).
Everything else (fwmark, sorry_server, send/expect banner checks, send_program, load_monitor,
quiesce_server, NAT settings, sync daemon settings) is reported as dropped with its line.
Piranha's own daemons' settings (heartbeat, deadtime, rsh_command, debug_level ...) describe
pulse and nanny, which shoal replaces; they are listed in the notes, not as dropped.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.desired.models import SCHEDULERS
from reconciler.errors import ConfigIssue
from reconciler.importer.sites import (
    Dropped,
    ImportedCheck,
    ImportedCluster,
    ImportedDirector,
    ImportedRealServer,
    ImportedService,
    ImportedSite,
    ImportSourceInvalid,
    Origin,
)

_ASSIGN = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>.*?)\s*$")
_OPEN = re.compile(r"^(?P<kind>virtual|server)\s+(?P<name>\S+)\s*\{$")
DEFAULT_KEEPALIVE = 6  # seconds between nanny's checks when lvs.cf is silent
DAEMON_KEYS = frozenset({
    "serial_no", "service", "heartbeat", "heartbeat_port", "deadtime", "rsh_command",
    "debug_level", "monitor_links", "hard_shutdown", "primary_private", "backup_private",
    "reentry", "use_regex",
})  # fmt: skip


@dataclass(slots=True)
class Block:
    kind: str  # "", "virtual", "server"
    name: str
    origin: Origin
    values: dict[str, tuple[str, Origin]] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)


def _value(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def _strip_comment(line: str) -> str:
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return line[:i]
    return line


def parse_lvs_cf(path: Path, display: str | None = None) -> Block:
    """The block tree of an lvs.cf; ImportSourceInvalid with file:line:col on bad syntax."""
    name = display or path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportSourceInvalid([ConfigIssue(file=name, message=f"cannot read: {exc}")]) from None
    issues: list[ConfigIssue] = []
    root = Block("", "", Origin(name, 1))
    stack = [root]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw).strip()
        origin = Origin(name, number)
        column = len(raw) - len(raw.lstrip()) + 1
        if not line:
            continue
        if line == "}":
            if len(stack) == 1:
                issues.append(ConfigIssue(name, "'}' closes no block", line=number, column=column))
            else:
                stack.pop()
            continue
        opened = _OPEN.match(line)
        if opened:
            kind = opened["kind"]
            parent = stack[-1]
            expected_parent = "" if kind == "virtual" else "virtual"
            if parent.kind != expected_parent:
                where = "inside a virtual block" if kind == "server" else "at the top level"
                issues.append(ConfigIssue(name, f"a {kind} block belongs {where}",
                                          line=number, column=column))  # fmt: skip
            block = Block(kind, opened["name"], origin)
            parent.blocks.append(block)
            stack.append(block)
            continue
        assigned = _ASSIGN.match(line)
        if assigned is None:
            issues.append(ConfigIssue(name, "expected `key = value`, `virtual NAME {`, "
                                      "`server NAME {` or `}`", line=number, column=column))
            continue
        stack[-1].values[assigned["key"]] = (_value(assigned["value"]), origin)
    if len(stack) > 1:
        issues.append(ConfigIssue(name, f"{stack[-1].kind} {stack[-1].name} is never closed",
                                  line=stack[-1].origin.line))  # fmt: skip
    if issues:
        raise ImportSourceInvalid(issues)
    return root


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


@dataclass(slots=True)
class _Reading:
    site: ImportedSite
    issues: list[ConfigIssue] = field(default_factory=list)

    def drop(self, origin: Origin, construct: str, why: str) -> None:
        self.site.dropped.append(Dropped(origin, construct, why))

    def bad(self, origin: Origin, message: str) -> None:
        self.issues.append(ConfigIssue(origin.file, message, line=origin.line))

    def integer(self, block: Block, key: str, default: int) -> int:
        if key not in block.values:
            return default
        text, origin = block.values[key]
        try:
            return int(text)
        except ValueError:
            self.bad(origin, f"{key} = {text!r}: expected a whole number")
            return default


def site_from_lvs_cf(root: Block, cluster: str) -> ImportedSite:
    site = ImportedSite()
    r = _Reading(site)
    g = root.values
    network = g.get("network", ("direct", root.origin))
    if network[0] != "direct":
        r.drop(network[1], f"network = {network[0]}", "shoal manages Direct Routing only; no "
               "virtual service of this file is imported")  # fmt: skip
    keepalive = r.integer(root, "keepalive", DEFAULT_KEEPALIVE)
    out = ImportedCluster(name=cluster, backend="keepalived", origin=root.origin)
    for role in ("primary", "backup"):
        if role not in g:
            continue
        text, origin = g[role]
        address = _address(text)
        if address is None:
            r.bad(origin, f"{role} = {text!r} is not an address")
        elif role == "backup" and g.get("backup_active", ("1", origin))[0] != "1":
            site.notes.append(f"{origin}: backup_active is not 1: the backup is not imported")
        else:
            out.directors.append(ImportedDirector(role=role, origin=origin, address=address))
    for key, (text, origin) in sorted(g.items(), key=lambda kv: kv[1][1].line):
        if key in ("primary", "backup", "backup_active", "network", "keepalive"):
            continue
        if key in DAEMON_KEYS:
            site.notes.append(f"{origin}: {key} configures Piranha's own daemons; not needed")
        else:
            r.drop(origin, f"{key} = {text}", "not modelled by shoal")
    for block in root.blocks:
        service = _virtual(r, block, keepalive)
        if service is not None and network[0] == "direct":
            out.services.append(service)
    if out.services:
        site.notes.append(f"{root.origin.file}: lvs.cf has no VRRP settings: the keepalived "
                          "backend gets shoal's defaults (virtual_router_id 51); make sure no "
                          "other VRRP router on the segment uses that id")  # fmt: skip
    site.clusters.append(out)
    if r.issues:
        raise ImportSourceInvalid(r.issues)
    return site


def _virtual(r: _Reading, block: Block, keepalive: int) -> ImportedService | None:
    v = block.values
    if v.get("active", ("1", block.origin))[0] != "1":
        r.site.notes.append(f"{block.origin}: virtual {block.name} is not active: not imported")
        return None
    for key in ("fwmark", "sorry_server", "send", "expect", "send_program", "load_monitor",
                "quiesce_server"):  # fmt: skip
        if key in v:
            text, origin = v[key]
            r.drop(origin, f"{key} = {text}", "not supported by shoal yet")
    if "fwmark" in v:
        r.drop(block.origin, f"virtual {block.name}", "a fwmark service is not imported as one "
               "address and port")  # fmt: skip
        return None
    if "address" not in v:
        r.bad(block.origin, f"virtual {block.name} has no address")
        return None
    text, origin = v["address"]
    parts = text.split()
    vip = _address(parts[0]) if parts else None
    if vip is None:
        r.bad(origin, f"address = {text!r}: expected `ADDRESS [DEVICE:ALIAS]`")
        return None
    port = r.integer(block, "port", 0)
    if not 1 <= port <= 65535:
        where = v.get("port", (text, block.origin))[1]
        r.bad(where, f"virtual {block.name} needs a port (1-65535)")
        return None
    protocol = v.get("protocol", ("tcp", origin))[0].lower()
    if protocol not in ("tcp", "udp"):
        r.bad(v["protocol"][1], f"protocol = {protocol!r}: expected tcp or udp")
        return None
    scheduler = v.get("scheduler", ("wlc", origin))
    if scheduler[0] not in SCHEDULERS:
        r.bad(scheduler[1], f"scheduler = {scheduler[0]!r} is not an IPVS scheduler")
        return None
    persistence = r.integer(block, "persistent", 0)
    if "pmask" in v and v["pmask"][0] != "255.255.255.255" and persistence:
        r.drop(v["pmask"][1], f"pmask = {v['pmask'][0]}", "persistence by network (netmask) "
               "is not modelled; persistence is per client address")  # fmt: skip
    if "timeout" in v:
        t_text, t_origin = v["timeout"]
        r.site.notes.append(f"{t_origin}: timeout = {t_text} (nanny's dead-after time) is not "
                            "modelled; shoal's check marks a server down on one failed check")
    service = ImportedService(
        vip=vip, port=port, protocol=protocol, origin=block.origin, scheduler=scheduler[0],
        persistence=persistence, name=block.name,
        check=ImportedCheck(type="tcp", interval=keepalive),
    )  # fmt: skip
    for key, (value, key_origin) in v.items():
        if key not in ("active", "address", "port", "protocol", "scheduler", "persistent",
                       "pmask", "timeout", "reentry", "vip_nmask", "fwmark", "sorry_server",
                       "send", "expect", "send_program", "load_monitor", "quiesce_server",
                       "use_regex"):  # fmt: skip
            r.drop(key_origin, f"{key} = {value}", "not modelled by shoal")
    for server in block.blocks:
        real = _server(r, server, port)
        if real is not None:
            service.real_servers.append(real)
    return service


def _server(r: _Reading, block: Block, port: int) -> ImportedRealServer | None:
    v = block.values
    if v.get("active", ("1", block.origin))[0] != "1":
        r.site.notes.append(f"{block.origin}: server {block.name} is not active: not imported")
        return None
    if "address" not in v:
        r.bad(block.origin, f"server {block.name} has no address")
        return None
    text, origin = v["address"]
    address = _address(text.split()[0]) if text.split() else None
    if address is None:
        r.bad(origin, f"address = {text!r} is not an address")
        return None
    if r.integer(block, "port", port) != port:
        r.drop(v["port"][1], f"port = {v['port'][0]}", "Direct Routing cannot change the port; "
               "the server is not imported")  # fmt: skip
        return None
    for key, (value, key_origin) in v.items():
        if key not in ("active", "address", "port", "weight"):
            r.drop(key_origin, f"{key} = {value}", "not modelled for a real server")
    return ImportedRealServer(address=address, port=port, weight=r.integer(block, "weight", 1),
                              origin=block.origin, name=block.name)  # fmt: skip
