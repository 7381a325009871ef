"""ipvsadm's command lines and ledger keys for shoal's IPVS services and destinations.

Every edit carries the whole spec: `-E` and `-e` are full replaces (an option left out goes back
to its default). In Direct Routing the real server's port is the service port, so destinations
are always written with it. `ipvs_restore_commands` rebuilds a director's table at boot.

IPv6: an address with its port is written `[ADDR]:PORT`, as ipvsadm reads it and as `-Sn` and
`-Ln` print it (only a fwmark service needs `-6`, and shoal writes none), in argv and ledger keys
alike: `tcp [fd77::100]:80 [fd77::21]:80`. A service and its real servers are of one family.
A persistent IPv6 service's netmask is a prefix length, 128 by default.
"""

from __future__ import annotations

import shlex
from typing import Literal

from reconciler.desired.endpoint import endpoint
from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import IpvsService
from reconciler.plan.steps import Argv

IpvsProtocol = Literal["tcp", "udp", "sctp"]
_PROTOCOLS: dict[str, IpvsProtocol] = {"tcp": "tcp", "udp": "udp", "sctp": "sctp"}

IPVSADM = "ipvsadm"
DEFAULT_PERSISTENCE_MASK = "255.255.255.255"
DEFAULT_PERSISTENCE_MASK6 = "128"
PROTO_FLAG = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
FWD_FLAG = {"route": "-g", "tunnel": "-i", "masq": "-m"}


def split_endpoint(text: str) -> tuple[str, int]:
    """The address and port of an `endpoint` (brackets removed); ValueError if it is none."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not an address:port: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address without brackets: {text!r}")
    return host, int(port)


def service_key(protocol: str, vip: str, port: int) -> str:
    """Ledger key of a virtual service, e.g. `tcp 10.77.0.100:80` or `tcp [fd77::100]:80`."""
    return f"{protocol} {endpoint(vip, port)}"


def protocol_of(key_part: str) -> IpvsProtocol:
    """The protocol at the start of a ledger key; KeyError for one shoal never writes."""
    return _PROTOCOLS[key_part]


def destination_key(protocol: str, vip: str, port: int, address: str) -> str:
    """Ledger key of a destination, e.g. `tcp 10.77.0.100:80 10.77.0.21:80` (DR: same port)."""
    return f"{service_key(protocol, vip, port)} {endpoint(address, port)}"


def svc_argv(protocol: str, vip: str, port: int) -> Argv:
    return (PROTO_FLAG[protocol], endpoint(vip, port))


def service_spec(scheduler: str, persistence: int | None) -> Argv:
    """Every service attribute shoal manages, for `-A` and `-E` alike."""
    spec: Argv = ("-s", scheduler)
    if persistence:
        spec += ("-p", str(persistence))
    return spec


def observed_spec(svc: IpvsService) -> Argv:
    """The full spec of a service as the facts show it (for undo of `-E`/`-D`)."""
    spec = service_spec(svc.scheduler, svc.persistence)
    default = DEFAULT_PERSISTENCE_MASK6 if svc.family == "inet6" else DEFAULT_PERSISTENCE_MASK
    if svc.persistence and svc.netmask and svc.netmask != default:
        spec += ("-M", svc.netmask)
    if svc.flags:
        spec += ("-b", ",".join(svc.flags))
    return spec


def service_add_argv(protocol: str, vip: str, port: int, scheduler: str, persistence: int) -> Argv:
    return (IPVSADM, "-A", *svc_argv(protocol, vip, port), *service_spec(scheduler, persistence))


def dest_argv(
    op: str, protocol: str, vip: str, port: int, address: str, weight: int, fwd: str = "route"
) -> Argv:
    """`-a`/`-e` with the full destination spec; the port is the service port (DR)."""
    return (
        IPVSADM, op, *svc_argv(protocol, vip, port),
        "-r", endpoint(address, port), FWD_FLAG[fwd], "-w", str(weight),
    )  # fmt: skip


def dest_delete_argv(protocol: str, vip: str, port: int, address: str) -> Argv:
    return (IPVSADM, "-d", *svc_argv(protocol, vip, port), "-r", endpoint(address, port))


def real_server_address(desired: Desired, host: str, family: int) -> str:
    """The real server's address of the service's family (the loader made sure it has one)."""
    address = desired.inventory.hosts[host].address_of(family)
    if address is None:
        raise ValueError(f"real server {host} has no IPv{family} address")
    return address


# --- boot restore ---------------------------------------------------------------------------------


def ipvs_restore_commands(desired: Desired, director: str) -> list[Argv]:
    """Ordered ipvsadm argv that rebuild this director's IPVS services at boot.

    Services first (`-A`, full spec), then their destinations (`-a -g -w W`, weight 0 kept for
    draining ones). Every command may fail with "already exists" when the table survived; the
    restore script should go on (it must never clear the whole table).
    """
    out: list[Argv] = []
    for cname in sorted(desired.clusters):
        cl = desired.clusters[cname]
        if cl.cluster.director != "ipvsadm" or director not in cl.cluster.directors:
            continue
        for svc in sorted(cl.services, key=lambda s: (s.protocol, s.vip, s.port)):
            out.append(
                service_add_argv(svc.protocol, svc.vip, svc.port, svc.scheduler, svc.persistence)
            )
            for rs in sorted(svc.real_servers, key=lambda r: r.host):
                address = real_server_address(desired, rs.host, svc.family)
                out.append(dest_argv("-a", svc.protocol, svc.vip, svc.port, address, rs.weight))
    return out


def ipvs_restore_lines(desired: Desired, director: str) -> list[str]:
    """The same as `ipvs_restore_commands`, each shell-quoted (for a restore script)."""
    return [shlex.join(argv) for argv in ipvs_restore_commands(desired, director)]
