"""The desired state of a config repository as frozen pydantic models.

This module owns the shape and the per-field rules (names, addresses, ranges). Reading TOML
files and the checks that span files (unknown hosts, duplicate VIP:port:proto, ...) live in
`reconciler.desired.loader`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from reconciler.desired.checks import HealthCheck as HealthCheck  # re-exported: a Service field
from reconciler.desired.freeze import FreezeWindow

# A name is something we put on a command line or in a file path: no shell metacharacters,
# no leading dash (it would read as an option), bounded length.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
NAME_PATTERN = _NAME_RE.pattern  # the same rule, for the API's OpenAPI parameters
# Linux IFNAMSIZ is 16 including the NUL; '/' and whitespace are refused by the kernel, ':' is
# only an alias label, which we do not accept as an interface.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh")


def quoted(value: object) -> str:
    """A value as it would be written in TOML (double quotes for strings), for messages."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


# fullmatch, not match with `$`: `$` also matches before a trailing newline, and "web1\n" is
# exactly the kind of name that must not reach a command line.
def is_valid_name(value: str) -> bool:
    """True if `value` may be used as a host, cluster, service or state name."""
    return _NAME_RE.fullmatch(value) is not None


def is_valid_interface_name(value: str) -> bool:
    """True if `value` is a Linux interface name we accept (no alias labels)."""
    return value not in (".", "..") and _IFNAME_RE.fullmatch(value) is not None


def _check_name(value: str) -> str:
    if not is_valid_name(value):
        raise ValueError(
            f"{quoted(value)} is not a valid name (letters, digits, '_', '.', '-'; "
            "must not start with '-' or '.'; at most 63 characters)"
        )
    return value


def _check_ifname(value: str) -> str:
    if not is_valid_interface_name(value):
        raise ValueError(
            f"{quoted(value)} is not a valid interface name (letters, digits, '_', '.', '-'; "
            "must not start with '-' or '.'; at most 15 characters)"
        )
    return value


def _check_ipv4(value: str) -> str:
    try:
        addr = ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{quoted(value)} is not an IPv4 address") from None
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr.is_reserved:
        raise ValueError(f"{quoted(value)} cannot be used as a host or virtual address")
    return str(addr)


def _ipv6_refusal(addr: ipaddress.IPv6Address) -> str | None:
    """Why an IPv6 address cannot be a host address or a VIP, or None."""
    if addr.is_unspecified:
        return "is the unspecified address"
    if addr.is_loopback:
        return "is the loopback address"
    if addr.is_multicast:
        return "is a multicast address (ff00::/8)"
    # A link-local address exists on every link at once: a VIP or a host must be reachable
    # beyond one segment, and ipvsadm/keepalived would need a zone to use it.
    if addr.is_link_local:
        return "is link-local (fe80::/10): use a global or unique-local (fc00::/7) address"
    if addr.ipv4_mapped is not None:
        return "is an IPv4-mapped address (::ffff:0:0/96): write the IPv4 address instead"
    if addr.is_site_local:
        return "is site-local (fec0::/10, deprecated by RFC 3879)"
    return None


def _check_ipv6(value: str) -> str:
    try:
        addr = ipaddress.IPv6Address(value)
    except ValueError:
        raise ValueError(f"{quoted(value)} is not an IPv6 address") from None
    refusal = _ipv6_refusal(addr)
    if refusal is not None:
        raise ValueError(f"{quoted(value)} {refusal}")
    # The compressed form is what `ip -j addr`, ipvsadm and nft print: compare like with like.
    return str(addr)


def _check_ip(value: str) -> str:
    """An IPv4 or IPv6 host address or VIP, in its canonical text form."""
    if ":" in value:
        return _check_ipv6(value)
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{quoted(value)} is not an IPv4 or IPv6 address") from None
    return _check_ipv4(value)


def address_order(address: str) -> tuple[int, int]:
    """Sort key of an IPv4 or IPv6 address: IPv4 first, then by value."""
    parsed = ipaddress.ip_address(address)
    return (parsed.version, int(parsed))


def family_of(address: str) -> Literal[4, 6]:
    """4 or 6 for a validated address (IPv6 text always holds a ':')."""
    return 6 if ":" in address else 4


def _check_scheduler(value: str) -> str:
    if value not in SCHEDULERS:
        raise ValueError(
            f"{quoted(value)} is not an IPVS scheduler (one of: {' '.join(SCHEDULERS)})"
        )
    return value


_T = TypeVar("_T")


def _unique_by(key: str, what: str, get: Callable[[_T], str]) -> Callable[[Sequence[_T]], Any]:
    """An after-validator refusing two items with the same `get(item)`.

    The error carries the index of the second item and the key inside it, so the loader can point
    at the exact line instead of at the whole array.
    """

    def check(items: Sequence[_T]) -> Sequence[_T]:
        seen: set[str] = set()
        for index, item in enumerate(items):
            value = get(item)
            if value in seen:
                raise PydanticCustomError(
                    "duplicate",
                    "{what} {value} is listed twice",
                    {"what": what, "value": quoted(value), "index": index, "key": key},
                )
            seen.add(value)
        return items

    return check


Name = Annotated[str, AfterValidator(_check_name)]
InterfaceName = Annotated[str, AfterValidator(_check_ifname)]
IPv4 = Annotated[str, AfterValidator(_check_ipv4)]
IPv6 = Annotated[str, AfterValidator(_check_ipv6)]
IPAddress = Annotated[str, AfterValidator(_check_ip)]
Scheduler = Annotated[str, AfterValidator(_check_scheduler)]
Port = Annotated[int, Field(ge=1, le=65535)]
Weight = Annotated[int, Field(ge=0, le=65535)]

ArpMethod = Literal["sysctl", "arptables", "nft-arp", "redirect"]
DirectorBackend = Literal["keepalived", "ipvsadm", "nftables"]
Approval = Literal["manual", "auto"]
DriftPolicy = Literal["report", "heal"]
Protocol = Literal["tcp", "udp"]


class _Model(BaseModel):
    # strict: TOML is typed, so `port = "80"` or `enabled = 1` is a mistake to report, not to
    # coerce. Array fields opt out (strict=False) only to accept lists for tuples.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, defer_build=True)


# --- shoal.toml -------------------------------------------------------------------------------


class ApplySettings(_Model):
    """How plans are applied."""

    batch_size: int = Field(default=1, ge=1, description="real servers changed at once")
    finished_batches: Literal["keep", "rollback"] = "rollback"
    unreachable_hosts: Literal["stop", "continue"] = Field(
        default="stop", description="stop the whole apply, or go on with the reachable hosts"
    )
    lockout_timeout: int = Field(default=60, ge=5, le=3600, description="seconds")
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    command_timeout: float = Field(default=60.0, gt=0, le=3600)
    max_concurrent_hosts: int = Field(default=64, ge=1, le=4096)
    drain_timeout: float = Field(default=30.0, ge=0, le=3600)


class VerifySettings(_Model):
    """The verification phase after every apply."""

    enabled: bool = True
    clients: Annotated[tuple[Name, ...], AfterValidator(_unique_by("", "client", lambda c: c))] = (
        Field(default=(), strict=False, description="inventory hosts that send probes")
    )
    requests_per_server: int = Field(default=10, ge=1, le=10000)
    timeout: float = Field(default=5.0, gt=0, le=300)


class IpvsSettings(_Model):
    """Kernel settings shoal keeps on every IPVS director (reconciler.plan.compile_director)."""

    # Reschedule a new connection that reuses the source port of a closed one whose real server
    # is drained or deleted, instead of sending it there or dropping it (lost requests).
    expire_nodest_conn: bool = True
    # Move persistent clients of a weight-0 real server at once, so a drain can end.
    expire_quiescent_template: bool = True


Become = Literal["none", "sudo"]


class LoginSettings(_Model):
    """How shoal logs in to hosts and gets root there; a host's own keys in inventory.toml win.

    With `become = "sudo"` every remote script runs as `sudo -n -u <become_user>` through the
    wrapper at `reconciler.transport.become.WRAPPER_PATH` (see `shoal sudoers`).
    """

    user: Name = "root"
    become: Become = "none"
    become_user: Name = "root"


class Settings(_Model):
    """`shoal.toml`: repository-wide settings."""

    approval: Approval = "manual"
    drift: DriftPolicy = "report"
    login: LoginSettings = LoginSettings()
    apply: ApplySettings = ApplySettings()
    verify: VerifySettings = VerifySettings()
    ipvs: IpvsSettings = IpvsSettings()


# --- inventory.toml ---------------------------------------------------------------------------


class Host(_Model):
    """One machine shoal manages or uses (directors, real servers, clients)."""

    name: Name
    # The address shoal logs in to: IPv4, or IPv6 on a host without IPv4. `address6` is the
    # host's IPv6 address beside an IPv4 `address` (dual stack).
    address: IPAddress
    address6: IPv6 | None = None
    interface: InterfaceName = "eth0"
    # The login user and how it becomes root; unset keys take shoal.toml's [login] (the loader
    # fills them in, so after loading every host carries its own values).
    user: Name = "root"
    become: Become = "none"
    become_user: Name = "root"
    port: Port = 22
    prefix: int = Field(default=24, ge=8, le=32, description="prefix of the IPv4 subnet")
    # Shorter than /64 breaks SLAAC and neighbour discovery assumptions on the segment.
    prefix6: int = Field(default=64, ge=64, le=128, description="prefix of the IPv6 subnet")
    # Where a director's IPVS sync daemon sends and hears connection state (multicast);
    # default: `interface`.
    sync_interface: InterfaceName | None = None
    # Let shoal take over (remove) what an operator configured by hand on this host when it
    # breaks an LVS-DR safety rule (reconciler.plan.invariants); off: shoal refuses the host
    # instead.
    adopt: bool = False

    @model_validator(mode="after")
    def _one_address_per_family(self) -> Host:
        if self.address6 is not None and family_of(self.address) == 6:
            raise PydanticCustomError(
                "address6_beside_ipv6",
                "address {address} is already IPv6; address6 is the IPv6 address beside an "
                "IPv4 address",
                {"address": quoted(self.address), "field": "address6"},
            )
        return self

    @property
    def ipv4(self) -> str | None:
        """The host's IPv4 address, if it has one."""
        return self.address if family_of(self.address) == 4 else None

    @property
    def ipv6(self) -> str | None:
        """The host's IPv6 address, if it has one."""
        return self.address6 if self.address6 is not None else (
            self.address if family_of(self.address) == 6 else None
        )  # fmt: skip

    def address_of(self, family: int) -> str | None:
        """The host's address of `family` (4 or 6), if it has one."""
        return self.ipv4 if family == 4 else self.ipv6

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(a for a in (self.ipv4, self.ipv6) if a is not None)


class Inventory(_Model):
    """`inventory.toml`: every host by name (the `[hosts.<name>]` table key)."""

    hosts: dict[Name, Host]

    @model_validator(mode="after")
    def _keys_are_names(self) -> Inventory:
        for key, host in self.hosts.items():
            if key != host.name:
                raise ValueError(f"host {quoted(key)} has name {quoted(host.name)}")
        return self


# --- clusters/<name>.toml ---------------------------------------------------------------------


class RealServer(_Model):
    host: Name
    weight: Weight = 1


class Service(_Model):
    """One virtual service: VIP, port and protocol, with its real servers."""

    name: Name
    # One family per virtual service, as in IPVS; a dual-stack service is two services, one
    # per family, with the same real servers (README: "IPv6 and dual stack").
    vip: IPAddress
    port: Port
    protocol: Protocol = "tcp"
    scheduler: Scheduler = "wlc"
    persistence: int = Field(default=0, ge=0, le=2678400, description="seconds, 0 = off")
    check: HealthCheck = HealthCheck()
    real_servers: Annotated[
        tuple[RealServer, ...], AfterValidator(_unique_by("host", "real server", lambda r: r.host))
    ] = Field(default=(), alias="real_server", strict=False)

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)

    @property
    def family(self) -> Literal[4, 6]:
        return family_of(self.vip)


class Vrrp(_Model):
    """VRRP settings for the keepalived backend."""

    virtual_router_id: int = Field(default=51, ge=1, le=255)
    priority_primary: int = Field(default=150, ge=1, le=254)
    priority_backup: int = Field(default=100, ge=1, le=254)
    advert_interval: int = Field(default=1, ge=1, le=255)

    @model_validator(mode="after")
    def _primary_wins(self) -> Vrrp:
        if self.priority_primary <= self.priority_backup:
            raise ValueError("priority_primary must be higher than priority_backup")
        return self


StateFunction = Literal[
    "sysctl.present",
    "addr.present",
    "arptables.rule_present",
    "nft.table_present",
    "iptables.rule_present",
    "ipvs.service_present",
    "ipvs.real_server_present",
    "file.managed",
    "service.running",
    "pkg.installed",
]


class ExtraState(_Model):
    """A low state declared directly in a cluster file (`[[state]]`), Salt-style."""

    id: Name
    function: StateFunction
    hosts: tuple[Name, ...] = Field(min_length=1, strict=False)
    args: dict[str, Any] = Field(default_factory=dict)
    require: tuple[Name, ...] = Field(default=(), strict=False)
    watch: tuple[Name, ...] = Field(default=(), strict=False)
    onchanges: tuple[Name, ...] = Field(default=(), strict=False)


class ConnectionSync(_Model):
    """The IPVS connection synchronisation daemon between a cluster's two directors: without
    it, the director that takes a VIP over has no entry for the connections already open
    through the other one and drops their packets."""

    enabled: bool = False
    # The IPVS sync id tells this cluster's sync messages from another cluster's on the segment.
    sync_id: int = Field(default=1, ge=0, le=255)
    # Seconds a (re)started primary stays backup, receiving the open connections, before it
    # takes the VIP back; the kernel syncs a busy connection about every 50 packets.
    preempt_delay: int = Field(default=15, ge=1, le=1000)


class ClusterHeader(_Model):
    name: Name
    directors: Annotated[
        tuple[Name, ...], AfterValidator(_unique_by("", "director", lambda d: d))
    ] = Field(min_length=1, max_length=2, strict=False)
    director: DirectorBackend = "keepalived"
    arp_method: ArpMethod = "sysctl"
    approval: Approval | None = None
    drift: DriftPolicy | None = None
    # As `Host.adopt`, for every host of this cluster.
    adopt: bool = False
    vrrp: Vrrp = Vrrp()
    sync: ConnectionSync = ConnectionSync()
    # A plan of this cluster applies after this many approvals by different tokens.
    approvals_required: int = Field(default=1, ge=1, le=9)

    @property
    def primary(self) -> str:
        return self.directors[0]

    @property
    def backup(self) -> str | None:
        return self.directors[1] if len(self.directors) > 1 else None


class Cluster(_Model):
    """`clusters/<name>.toml`."""

    cluster: ClusterHeader
    services: Annotated[
        tuple[Service, ...], AfterValidator(_unique_by("name", "service", lambda s: s.name))
    ] = Field(default=(), alias="service", strict=False)
    states: Annotated[
        tuple[ExtraState, ...], AfterValidator(_unique_by("id", "state id", lambda s: s.id))
    ] = Field(default=(), alias="state", strict=False)
    # When an apply may not start (`[[freeze]]`, see reconciler.desired.freeze).
    freeze: tuple[FreezeWindow, ...] = Field(default=(), strict=False)

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)


# --- the whole repository ---------------------------------------------------------------------


class Desired(_Model):
    """A validated config repository at one revision."""

    settings: Settings
    inventory: Inventory
    clusters: dict[Name, Cluster]
    known_hosts: str = Field(description="OpenSSH known_hosts text from the repo")
    revision: str = ""

    def approval_for(self, cluster: str) -> Approval:
        return self.clusters[cluster].cluster.approval or self.settings.approval

    def adopts(self, host: str) -> bool:
        """Whether shoal may take over hand-made state on `host` (its own or a cluster's
        `adopt`)."""
        inv = self.inventory.hosts.get(host)
        if inv is not None and inv.adopt:
            return True
        return any(
            c.cluster.adopt
            and (host in c.cluster.directors
                 or any(r.host == host for s in c.services for r in s.real_servers))
            for c in self.clusters.values()
        )  # fmt: skip

    def drift_for(self, cluster: str) -> DriftPolicy:
        return self.clusters[cluster].cluster.drift or self.settings.drift
