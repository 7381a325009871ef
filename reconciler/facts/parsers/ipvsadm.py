"""`ipvsadm -Sn` (structure and weights) and `ipvsadm -Ln` (connection counters) to `IpvsTable`.

The save format is fixed by ipvsadm's printf calls: `-A <svc> -s <sched> [-p T] [-M mask]
[--pe name] [-o] [-b flags]` and `-a <svc> -r ADDR:PORT <-g|-i|-m> -w W [tunnel options]`, where
<svc> is `-t|-u|--sctp-service ADDR:PORT` or `-f MARK [-6]` and IPv6 addresses are bracketed.
The listing gives ActiveConn/InActConn per destination; a local real server lists as "Local"
and saves as `-g`, so both map to "route".
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterator
from typing import Literal

from reconciler.errors import FactParseError
from reconciler.facts.hostfacts import (
    IpvsDestination,
    IpvsProtocol,
    IpvsService,
    IpvsServiceKey,
    IpvsTable,
)

Forward = Literal["route", "tunnel", "masq"]

_SERVICE_OPTS: dict[str, IpvsProtocol] = {
    "-t": "tcp",
    "--tcp-service": "tcp",
    "-u": "udp",
    "--udp-service": "udp",
    "--sctp-service": "sctp",
    "-f": "fwmark",
    "--fwmark-service": "fwmark",
}
_FORWARD_OPTS: dict[str, Forward] = {
    "-g": "route",
    "--gatewaying": "route",
    "-i": "tunnel",
    "--ipip": "tunnel",
    "-m": "masq",
    "--masquerading": "masq",
}
_LIST_FORWARD: dict[str, Forward] = {
    "Route": "route",
    "Local": "route",
    "Tunnel": "tunnel",
    "Masq": "masq",
}
_LIST_PROTOCOLS: dict[str, IpvsProtocol] = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}

_HOST_PORT_RE = re.compile(
    r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<port>\d+)|(?P<v4>[\d.]+):(?P<port4>\d+)"
)

# (service key, destination address, destination port) -> (ActiveConn, InActConn)
ConnCounters = dict[tuple[IpvsServiceKey, str, int], tuple[int, int]]


def split_host_port(text: str) -> tuple[str, int, Literal["inet", "inet6"]]:
    """`1.2.3.4:80` or `[2001:db8::1]:80` -> (canonical address, port, family)."""
    m = _HOST_PORT_RE.fullmatch(text)
    if m is None:
        raise FactParseError("ipvsadm", f"not an address:port: {text!r}")
    raw = m.group("v6") or m.group("v4")
    port = int(m.group("port") or m.group("port4"))
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError:
        raise FactParseError("ipvsadm", f"not an IP address: {raw!r}") from None
    return str(addr), port, "inet6" if addr.version == 6 else "inet"


class _Tokens:
    def __init__(self, line: str) -> None:
        self.line = line
        self.items = line.split()
        self.pos = 0

    def __iter__(self) -> Iterator[str]:
        while self.pos < len(self.items):
            tok = self.items[self.pos]
            self.pos += 1
            yield tok

    def value(self, opt: str) -> str:
        if self.pos >= len(self.items):
            raise FactParseError("ipvsadm", f"{opt} without a value: {self.line!r}")
        tok = self.items[self.pos]
        self.pos += 1
        return tok

    def peek(self) -> str | None:
        return self.items[self.pos] if self.pos < len(self.items) else None


def _service_key(
    tokens: _Tokens, opt: str
) -> tuple[IpvsProtocol, str, int, int | None, Literal["inet", "inet6"]]:
    protocol = _SERVICE_OPTS[opt]
    value = tokens.value(opt)
    if protocol == "fwmark":
        if not value.isdigit():
            raise FactParseError("ipvsadm", f"fwmark {value!r} is not a number")
        family: Literal["inet", "inet6"] = "inet"
        if tokens.peek() == "-6":
            tokens.value("-6")
            family = "inet6"
        return protocol, "", 0, int(value), family
    address, port, family = split_host_port(value)
    return protocol, address, port, None, family


def _parse_service_line(line: str) -> IpvsService:
    tokens = _Tokens(line)
    it = iter(tokens)
    next(it)  # -A
    key = None
    scheduler = "wlc"
    persistence: int | None = None
    netmask: str | None = None
    pe: str | None = None
    one_packet = False
    flags: tuple[str, ...] = ()
    for tok in it:
        if tok in _SERVICE_OPTS:
            key = _service_key(tokens, tok)
        elif tok in ("-s", "--scheduler"):
            scheduler = tokens.value(tok)
        elif tok in ("-p", "--persistent"):
            # Bare -p means the default 300 s; -Sn always writes the number.
            nxt = tokens.peek()
            persistence = int(tokens.value(tok)) if nxt is not None and nxt.isdigit() else 300
        elif tok in ("-M", "--netmask"):
            netmask = tokens.value(tok)
        elif tok == "--pe":
            pe = tokens.value(tok)
        elif tok in ("-o", "--ops"):
            one_packet = True
        elif tok in ("-b", "--sched-flags"):
            flags = tuple(f for f in tokens.value(tok).split(",") if f)
        elif tok == "-6":
            pass
        else:
            raise FactParseError("ipvsadm", f"unknown service option {tok!r} in {line!r}")
    if key is None:
        raise FactParseError("ipvsadm", f"service line without a service: {line!r}")
    protocol, address, port, fwmark, family = key
    return IpvsService(
        protocol=protocol,
        address=address,
        port=port,
        scheduler=scheduler,
        persistence=persistence,
        netmask=netmask,
        flags=flags,
        fwmark=fwmark,
        family=family,
        pe=pe,
        one_packet=one_packet,
    )


def _parse_destination_line(line: str) -> IpvsDestination:
    tokens = _Tokens(line)
    it = iter(tokens)
    next(it)  # -a
    key = None
    real: tuple[str, int] | None = None
    forward: Forward = "route"  # ipvsadm's default when no method is given
    weight = 1
    tunnel: list[str] = []
    for tok in it:
        if tok in _SERVICE_OPTS:
            key = _service_key(tokens, tok)
        elif tok in ("-r", "--real-server"):
            value = tokens.value(tok)
            if value.startswith("[") or value.count(":") == 1:
                address, port, _ = split_host_port(value)
            else:
                address, port = str(ipaddress.ip_address(value)), 0
            real = (address, port)
        elif tok in _FORWARD_OPTS:
            forward = _FORWARD_OPTS[tok]
        elif tok in ("-w", "--weight"):
            weight = int(tokens.value(tok))
        elif tok in ("--tun-type", "--tun-port", "-x", "-y", "--u-threshold", "--l-threshold"):
            tunnel += [tok, tokens.value(tok)]
        elif tok in ("--tun-nocsum", "--tun-csum", "--tun-remcsum", "-6"):
            if tok != "-6":
                tunnel.append(tok)
        else:
            raise FactParseError("ipvsadm", f"unknown destination option {tok!r} in {line!r}")
    if key is None or real is None:
        raise FactParseError("ipvsadm", f"destination line without service or -r: {line!r}")
    protocol, address, port, fwmark, _family = key
    return IpvsDestination(
        protocol=protocol,
        service_address=address,
        service_port=port,
        service_fwmark=fwmark,
        address=real[0],
        port=real[1],
        forward=forward,
        weight=weight,
        tunnel_options=tuple(tunnel),
    )


def parse_ipvsadm_save(text: str) -> tuple[tuple[IpvsService, ...], tuple[IpvsDestination, ...]]:
    """Parse `ipvsadm -Sn`: every service and destination, in the order printed."""
    services: list[IpvsService] = []
    dests: list[IpvsDestination] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-A "):
            services.append(_parse_service_line(line))
        elif line.startswith("-a "):
            dests.append(_parse_destination_line(line))
        else:
            raise FactParseError("ipvsadm", f"unexpected line {raw_line!r}")
    known = {s.key for s in services}
    for d in dests:
        if d.service_key not in known:
            raise FactParseError("ipvsadm", f"destination {d.address} of an unlisted service")
    return tuple(services), tuple(dests)


def parse_ipvsadm_list(text: str) -> ConnCounters:
    """Parse `ipvsadm -Ln`: ActiveConn/InActConn per destination."""
    counters: ConnCounters = {}
    service: IpvsServiceKey | None = None
    for raw_line in text.splitlines():
        line = raw_line.rstrip()
        if not line.strip():
            continue
        if line.startswith(("IP Virtual Server", "Prot ", "  -> RemoteAddress")):
            continue
        if line.startswith("  -> "):
            if service is None:
                raise FactParseError("ipvsadm", f"destination before any service: {line!r}")
            parts = line[5:].split()
            if len(parts) != 5 or parts[1] not in _LIST_FORWARD:
                raise FactParseError("ipvsadm", f"unexpected destination line {line!r}")
            address, port, _ = split_host_port(parts[0])
            counters[(service, address, port)] = (int(parts[3]), int(parts[4]))
            continue
        parts = line.split()
        if parts[0] == "FWM" and len(parts) >= 2 and parts[1].isdigit():
            service = ("fwmark", "", 0, int(parts[1]))
        elif parts[0] in _LIST_PROTOCOLS and len(parts) >= 2:
            address, port, _ = split_host_port(parts[1])
            service = (_LIST_PROTOCOLS[parts[0]], address, port, 0)
        else:
            raise FactParseError("ipvsadm", f"unexpected line {line!r}")
    return counters


def ipvs_table(save_text: str, list_text: str | None) -> IpvsTable:
    """The table from `-Sn`, with the counters of `-Ln` when that listing could be read.

    The two commands are two snapshots: a destination missing from the listing keeps unknown
    (None) counters rather than zero.
    """
    services, dests = parse_ipvsadm_save(save_text)
    detail = ""
    if list_text is None:
        detail = "connection counters unknown: ipvsadm -Ln failed"
    else:
        counters = parse_ipvsadm_list(list_text)
        merged = []
        for d in dests:
            found = counters.get((d.service_key, d.address, d.port))
            if found is None:
                merged.append(d)
            else:
                merged.append(
                    d.model_copy(
                        update={"active_connections": found[0], "inactive_connections": found[1]}
                    )
                )
        dests = tuple(merged)
    return IpvsTable(
        available=True, loaded=True, services=services, destinations=dests, detail=detail
    )


def quote_line(line: str) -> str:
    """Re-quote a saved line for a shell (used in error messages only)."""
    return shlex.join(line.split())
