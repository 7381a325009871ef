"""keepalived.conf statements read as clusters: VRRP instances, virtual servers, real servers.

One file is one director's configuration. Each `vrrp_instance` becomes a cluster holding the
virtual servers whose VIP it carries; its `state`/`priority` say whether this director is the
primary. What shoal models is read (DR virtual servers by address and port, their scheduler,
persistence, protocol, real servers with weights, one HTTP_GET/TCP_CHECK/UDP_CHECK per service,
the VRRP router id, priority and advert interval); every other statement is reported as
`Dropped` with its line, so the caller can refuse the import or write what it can and say what
it left out. Statements that only restate shoal's own behaviour (`lb_kind DR`, `protocol TCP`,
`router_id`) are read without a note.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from reconciler.desired.models import SCHEDULERS
from reconciler.importer.keepalived_syntax import Statement
from reconciler.importer.sites import (
    CheckType,
    Dropped,
    ImportedCheck,
    ImportedRealServer,
    ImportedService,
    Origin,
)

# keepalived's own defaults where the file is silent (keepalived.conf(5)).
DEFAULT_DELAY_LOOP = 60
DEFAULT_CONNECT_TIMEOUT = 5
FORWARDING_KEYS = ("lb_kind", "lvs_method")
SCHEDULER_KEYS = ("lb_algo", "lvs_sched")
CHECKERS = ("HTTP_GET", "TCP_CHECK", "UDP_CHECK")
UNSUPPORTED_CHECKERS = ("SSL_GET", "SMTP_CHECK", "DNS_CHECK", "MISC_CHECK", "BFD_CHECK",
                        "PING_CHECK", "FILE_CHECK")  # fmt: skip


@dataclass(slots=True)
class VrrpInstance:
    name: str
    origin: Origin
    state: str | None = None
    interface: str | None = None
    virtual_router_id: int | None = None
    priority: int | None = None
    advert_interval: int = 1
    vips: list[tuple[str, Origin]] = field(default_factory=list)


@dataclass(slots=True)
class DirectorConf:
    """What one director's keepalived.conf says."""

    file: str
    router_id: str | None = None
    instances: list[VrrpInstance] = field(default_factory=list)
    services: list[ImportedService] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def drop(self, st: Statement, why: str, construct: str | None = None) -> None:
        self.dropped.append(Dropped(st.origin, construct or " ".join(st.words), why))


def _scalar(st: Statement, conf: DirectorConf) -> str | None:
    """The one value of `KEY VALUE`; anything more (words, a block) is not guessed at."""
    if len(st.words) == 2 and st.block is None:
        return st.words[1]
    conf.drop(st, f"expected `{st.keyword} VALUE` alone on its line")
    return None


def _int(st: Statement, conf: DirectorConf) -> int | None:
    value = _scalar(st, conf)
    if value is None:
        return None
    if not value.isdigit():
        conf.drop(st, "expected a whole number here")
        return None
    return int(value)


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def read_director_conf(statements: list[Statement], file: str) -> DirectorConf:
    conf = DirectorConf(file)
    for st in statements:
        if st.keyword == "global_defs":
            router = next((s for s in st.block or [] if s.keyword == "router_id"), None)
            if router is not None:
                conf.router_id = _scalar(router, conf)
            for other in st.block or []:
                if other.keyword != "router_id":
                    conf.drop(other, "global_defs settings other than router_id are not modelled")
        elif st.keyword == "vrrp_instance":
            conf.instances.append(_vrrp_instance(st, conf))
        elif st.keyword == "virtual_server":
            service = _virtual_server(st, conf)
            if service is not None:
                conf.services.append(service)
        else:
            conf.drop(st, f"{st.keyword} blocks are not modelled by shoal",
                      construct=" ".join(st.words[:2]))  # fmt: skip
    return conf


def _vrrp_instance(st: Statement, conf: DirectorConf) -> VrrpInstance:
    inst = VrrpInstance(st.words[1] if len(st.words) > 1 else "", st.origin)
    for s in st.block or []:
        key = s.keyword
        if key == "state":
            inst.state = (_scalar(s, conf) or "").upper() or None
        elif key == "interface":
            inst.interface = _scalar(s, conf)
        elif key == "virtual_router_id":
            inst.virtual_router_id = _int(s, conf)
        elif key == "priority":
            inst.priority = _int(s, conf)
        elif key == "advert_int":
            inst.advert_interval = _int(s, conf) or 1
        elif key == "virtual_ipaddress":
            for entry in s.block or []:
                address = _address(entry.words[0].split("/")[0]) if entry.words else None
                if address is None:
                    conf.drop(entry, "not an address")
                    continue
                inst.vips.append((address, entry.origin))
                extra = [w for w in entry.words[1:] if w not in ("dev", inst.interface)]
                if extra:
                    conf.drop(entry, "address options other than `dev` are not modelled")
        else:
            conf.drop(s, "not modelled in shoal's VRRP settings (router id, priorities, "
                      "advert interval)")  # fmt: skip
    return inst


def _virtual_server(st: Statement, conf: DirectorConf) -> ImportedService | None:
    words = st.words[1:]
    if words[:1] in (["fwmark"], ["group"]):
        conf.drop(st, f"virtual_server {words[0]} is not supported yet (one address and port "
                  "per service)")  # fmt: skip
        return None
    vip = _address(words[0]) if len(words) == 2 else None
    if vip is None or not words[1].isdigit():
        conf.drop(st, "expected `virtual_server ADDRESS PORT`")
        return None
    block = st.block or []
    forwarding = next((s for s in reversed(block) if s.keyword in FORWARDING_KEYS), None)
    given = forwarding is not None and len(forwarding.words) > 1
    method = forwarding.words[1].upper() if forwarding is not None and given else "NAT"
    if method != "DR":
        why = f"lb_kind {method}" if given else "no lb_kind: keepalived's default is NAT"
        conf.drop(st, f"{why}; shoal manages Direct Routing only")
        return None
    service = ImportedService(vip=vip, port=int(words[1]), protocol="tcp", origin=st.origin)
    delay = DEFAULT_DELAY_LOOP
    scheduler_seen = False
    checks: list[tuple[ImportedCheck | None, Statement]] = []
    for s in block:
        key = s.keyword
        if key in FORWARDING_KEYS:
            continue
        if key in SCHEDULER_KEYS:
            scheduler = _scalar(s, conf)
            if scheduler is None or scheduler not in SCHEDULERS:
                conf.drop(s, "not an IPVS scheduler shoal knows")
                continue
            service.scheduler, scheduler_seen = scheduler, True
        elif key == "protocol":
            proto = (_scalar(s, conf) or "").lower()
            if proto not in ("tcp", "udp"):
                conf.drop(st, f"protocol {s.words[1]} is not supported (tcp and udp)")
                return None
            service.protocol = proto
        elif key == "persistence_timeout":
            service.persistence = _int(s, conf) or 0
        elif key == "delay_loop":
            delay = _int(s, conf) or delay
        elif key == "real_server":
            real, check = _real_server(s, service, conf)
            if real is not None:
                service.real_servers.append(real)
                checks.append((check, s))
        else:
            conf.drop(s, "not modelled for a virtual service yet")
    if not scheduler_seen:
        conf.notes.append(f"{st.origin}: no lb_algo; imported with scheduler wlc")
    service.check = _one_check(checks, delay, service, conf)
    return service


def _real_server(
    st: Statement, service: ImportedService, conf: DirectorConf
) -> tuple[ImportedRealServer | None, ImportedCheck | None]:
    address = _address(st.words[1]) if len(st.words) == 3 else None
    if address is None or not st.words[2].isdigit():
        conf.drop(st, "expected `real_server ADDRESS PORT`")
        return None, None
    if int(st.words[2]) != service.port:
        conf.drop(st, "Direct Routing cannot change the port: the real server's port must be "
                  f"the virtual server's ({service.port})")  # fmt: skip
        return None, None
    real = ImportedRealServer(address=address, port=service.port, weight=1, origin=st.origin)
    check: ImportedCheck | None = None
    checkers = 0
    for s in st.block or []:
        if s.keyword == "weight":
            real.weight = _int(s, conf) or 0
        elif s.keyword in CHECKERS:
            checkers += 1
            check = _checker(s, conf)
        elif s.keyword in UNSUPPORTED_CHECKERS:
            checkers += 1
            conf.drop(s, f"{s.keyword} is not a check shoal runs yet (tcp, http)")
        else:
            conf.drop(s, "not modelled for a real server")
    if checkers > 1:
        conf.drop(st, "more than one checker on a real server; shoal runs one check")
    return real, check if checkers == 1 else None


def _checker(st: Statement, conf: DirectorConf) -> ImportedCheck | None:
    timeout = DEFAULT_CONNECT_TIMEOUT
    path, status = "/", 200
    urls = 0
    for s in st.block or []:
        if s.keyword == "connect_timeout":
            timeout = _int(s, conf) or timeout
        elif s.keyword == "connect_port":
            continue  # the service's port, as shoal renders it; checked below
        elif s.keyword == "url" and st.keyword == "HTTP_GET":
            urls += 1
            for u in s.block or []:
                if u.keyword == "path":
                    path = _scalar(u, conf) or path
                elif u.keyword == "status_code":
                    status = _int(u, conf) or status
                else:
                    conf.drop(u, "url settings other than path and status_code are not modelled")
        else:
            conf.drop(s, f"not modelled for {st.keyword}")
    if urls > 1:
        conf.drop(st, "more than one url: shoal checks one path")
    kind: CheckType = "http" if st.keyword == "HTTP_GET" else "tcp"
    return ImportedCheck(type=kind, path=path, expect=status, timeout=timeout)


def _one_check(
    checks: list[tuple[ImportedCheck | None, Statement]],
    delay: int,
    service: ImportedService,
    conf: DirectorConf,
) -> ImportedCheck:
    """keepalived checks each real server on its own; shoal has one check per service."""
    distinct = {c for c, _ in checks}
    if not checks or distinct == {None}:
        return ImportedCheck(type="none", interval=delay)
    if len(distinct) > 1:
        conf.drop(checks[0][1], "the real servers of this virtual server have different checks; "
                  "shoal has one check per service", construct="real_server checks")  # fmt: skip
    first = next(c for c, _ in checks if c is not None)
    return ImportedCheck(type=first.type, path=first.path, expect=first.expect, interval=delay,
                         timeout=first.timeout)  # fmt: skip
