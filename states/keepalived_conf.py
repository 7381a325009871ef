"""keepalived.conf for one director, rendered from the desired state (deterministic, sorted).

`lb_kind DR` is written explicitly and in upper case (a missing or lower-case method is NAT);
there is no `vrrp_strict` (it installs DROP rules for the VIPs) and no script. The VIPs are /32
on the director's interface: a /32 adds no prefix route and never becomes a secondary of the
interface's own subnet. A real server that leaves is kept at weight 0 (`leaving`) in a drain
config, since a SIGHUP deletes real servers missing from the file without draining them.

IPv6 (keepalived 2.2.7's parsers, read for the facts): `virtual_server ADDR PORT` and
`real_server ADDR PORT` take an IPv6 address as it is, and one virtual server is one family.
A VRRP instance takes its family from its first virtual_ipaddress and refuses the other
family's there ("address family must match VRRP instance - ignoring"), so a dual-stack cluster
keeps one instance (both families fail over together) whose virtual_ipaddress holds the VIPs of
the first family in address order (IPv4, so VRRP itself stays on IPv4) and whose
virtual_ipaddress_excluded the others: those are added and removed with the instance's state
like the first but stay out of the adverts. An IPv6 VIP is /128; keepalived adds it with
nodad, and on becoming master sends unsolicited neighbour advertisements for it (as gratuitous
ARPs for IPv4; the `garp_master_*` timings cover both), excluded VIPs included.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.desired.endpoint import endpoint
from reconciler.desired.models import Cluster, Desired, Service, address_order, family_of
from states.ipvs_argv import real_server_address, split_endpoint


def rs_key(protocol: str, vip: str, port: int, address: str) -> str:
    """Ledger key of a real server in keepalived.conf (same shape as the IPVS destination key)."""
    return f"{protocol} {endpoint(vip, port)} {endpoint(address, port)}"


def parse_rs_key(key: str) -> tuple[str, str, int, str] | None:
    try:
        protocol, svc, rs = key.split(" ")
        vip, port = split_endpoint(svc)
        address = split_endpoint(rs)[0]
        return protocol, vip, port, address
    except ValueError:
        return None


def keepalived_clusters(desired: Desired, director: str) -> list[Cluster]:
    return [
        desired.clusters[n]
        for n in sorted(desired.clusters)
        if desired.clusters[n].cluster.director == "keepalived"
        and director in desired.clusters[n].cluster.directors
    ]


def desired_rs_keys(desired: Desired, director: str) -> set[str]:
    out = set()
    for cl in keepalived_clusters(desired, director):
        for svc in cl.services:
            for rs in svc.real_servers:
                address = real_server_address(desired, rs.host, svc.family)
                out.add(rs_key(svc.protocol, svc.vip, svc.port, address))
    return out


def _checker(svc: Service, indent: str) -> list[str]:
    c = svc.check
    i2 = indent + "    "
    if c.type == "none":
        return []
    connect = [f"{i2}connect_port {svc.port}", f"{i2}connect_timeout {c.timeout}"]
    if c.type in ("http", "https"):
        url = [f"{i2}    path {c.path}", f"{i2}    status_code {c.expect}"]
        if c.digest is not None:
            url.append(f"{i2}    digest {c.digest}")
        if c.body_regex is not None:
            # Debian 12's keepalived is built with --enable-regex (PCRE2); the model keeps
            # quotes and line breaks out of the pattern.
            url.append(f'{i2}    regex "{c.body_regex}"')
        if c.sni is not None:
            # keepalived 2.2 sends the url's virtualhost as SNI when enable_sni is set.
            url.append(f"{i2}    virtualhost {c.sni}")
        kind = "SSL_GET" if c.type == "https" else "HTTP_GET"
        sni = [f"{i2}enable_sni"] if c.sni is not None else []
        return [f"{indent}{kind} {{", f"{i2}url {{", *url, f"{i2}}}", *connect, *sni,
                f"{indent}}}"]  # fmt: skip
    if c.type == "dns":
        return [f"{indent}DNS_CHECK {{", f"{i2}type {c.query_type}", f"{i2}name {c.query_name}",
                *connect, f"{indent}}}"]  # fmt: skip
    if c.type == "udp":
        reply = [f"{i2}require_reply {c.receive}"] if c.receive is not None else []
        return [f"{indent}UDP_CHECK {{", f"{i2}payload {c.send}", *reply, *connect,
                f"{indent}}}"]  # fmt: skip
    kind = "UDP_CHECK" if svc.protocol == "udp" else "TCP_CHECK"
    return [f"{indent}{kind} {{", *connect, f"{indent}}}"]


def _vip_line(vip: str, interface: str) -> str:
    return f"        {vip}/{128 if family_of(vip) == 6 else 32} dev {interface}"


def _real_server(address: str, port: int, weight: int, checker: list[str]) -> list[str]:
    return [f"    real_server {address} {port} {{", f"        weight {weight}", *checker, "    }"]


def render_keepalived_conf(desired: Desired, director: str, leaving: Iterable[str] = ()) -> str:
    """keepalived.conf for `director`; `leaving` real server keys are kept at weight 0 (drain)."""
    host = desired.inventory.hosts[director]
    clusters = keepalived_clusters(desired, director)
    lines = ["# Managed by shoal; changes here are overwritten.", "global_defs {"]
    lines.append(f"    router_id {director}")
    # One sync daemon per keepalived (a global setting; the loader refuses two clusters asking
    # for it on one director). keepalived runs it as master while its instance is MASTER and
    # as backup otherwise, so the state follows the VIP through a failover.
    for cl in clusters:
        if cl.cluster.sync.enabled:
            iface, sync_id = host.sync_interface or host.interface, cl.cluster.sync.sync_id
            lines.append(f"    lvs_sync_daemon {iface} VI_{cl.cluster.name} id {sync_id}")
    lines.append("}")
    # Each virtual server: (proto, vip, port) -> (scheduler, persistence, delay, [rs lines]).
    servers: dict[tuple[str, str, int], tuple[str, int, int, list[tuple[str, list[str]]]]] = {}
    for cl in clusters:
        head = cl.cluster
        primary = head.primary == director
        vips = sorted({s.vip for s in cl.services}, key=address_order)
        own = [v for v in vips if family_of(v) == family_of(vips[0])] if vips else []
        excluded = [v for v in vips if v not in own]
        # With sync, a (re)started primary first listens as backup for preempt_delay seconds:
        # the other director's sync daemon sends it the open connections before it takes the
        # VIP back (keepalived honours preempt_delay only from the BACKUP state).
        waits = head.sync.enabled and primary
        lines += [
            "",
            f"vrrp_instance VI_{head.name} {{",
            f"    state {'MASTER' if primary and not head.sync.enabled else 'BACKUP'}",
            f"    interface {host.interface}",
            f"    virtual_router_id {head.vrrp.virtual_router_id}",
            f"    priority {head.vrrp.priority_primary if primary else head.vrrp.priority_backup}",
            f"    advert_int {head.vrrp.advert_interval}",
            *([f"    preempt_delay {head.sync.preempt_delay}"] if waits else []),
            "    virtual_ipaddress {",
            *(_vip_line(vip, host.interface) for vip in own),
            "    }",
        ]
        if excluded:
            lines += [
                "    virtual_ipaddress_excluded {",
                *(_vip_line(vip, host.interface) for vip in excluded),
                "    }",
            ]
        lines.append("}")
        for svc in cl.services:
            rss = []
            for rs in svc.real_servers:
                address = real_server_address(desired, rs.host, svc.family)
                rss.append((address, _real_server(address, svc.port, rs.weight, _checker(
                    svc, "        "))))  # fmt: skip
            servers[(svc.protocol, svc.vip, svc.port)] = (
                svc.scheduler, svc.persistence, svc.check.interval, rss,
            )  # fmt: skip
    for key in sorted(set(leaving)):
        parsed = parse_rs_key(key)
        if parsed is None:
            continue
        protocol, vip, port, address = parsed
        # A service that left entirely keeps a bare virtual server for the drain; its real
        # servers have no checker (always up) and weight 0 (no new connections).
        entry = servers.setdefault((protocol, vip, port), ("wlc", 0, 5, []))
        if all(a != address for a, _ in entry[3]):
            entry[3].append((address, _real_server(address, port, 0, [])))
    for (protocol, vip, port), (sched, persistence, delay, rss) in sorted(
        servers.items(), key=lambda kv: (address_order(kv[0][1]), kv[0][2], kv[0][0])
    ):
        lines += [
            "",
            f"virtual_server {vip} {port} {{",
            f"    delay_loop {delay}",
            f"    lb_algo {sched}",
            "    lb_kind DR",
            f"    protocol {protocol.upper()}",
        ]
        if persistence:
            lines.append(f"    persistence_timeout {persistence}")
        for _, rs_lines in sorted(rss, key=lambda r: address_order(r[0])):
            lines += rs_lines
        lines.append("}")
    return "\n".join(lines) + "\n"
