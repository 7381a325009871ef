"""Typed facts of one host: what it really is, as read by the facts script.

This module owns the value types only. Parsing the tools' output lives in
`reconciler.facts.parsers`, the remote script in `reconciler.facts.script`, reading its output
in `reconciler.facts.parse` and gathering in `reconciler.facts.gather`.

Every fact is a `Fact[T]`: either known (with a value) or unknown (with the reason). An unknown
fact is never "absent": a state that would remove something on the grounds of an unknown fact
must not plan the removal and must say why.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

# Why a fact is unknown when the facts never asked for it (an output from before the fact).
NOT_GATHERED = "not gathered"

T = TypeVar("T")


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class Fact(_Value, Generic[T]):
    """A fact that was read (`value`) or could not be (`unknown_reason`)."""

    value: T | None = None
    unknown_reason: str | None = None

    @property
    def known(self) -> bool:
        return self.unknown_reason is None

    @classmethod
    def of(cls, value: T) -> Fact[T]:
        return cls(value=value)

    @classmethod
    def unknown(cls, reason: str) -> Fact[T]:
        return cls(unknown_reason=reason)


# --- addresses ----------------------------------------------------------------------------------


class Address(_Value):
    address: str
    prefix: int
    label: str | None = None
    family: Literal["inet", "inet6"] = "inet"
    scope: str | None = None


class Interface(_Value):
    name: str
    mac: str | None = None
    up: bool = False
    addresses: tuple[Address, ...] = ()


# --- ARP filtering --------------------------------------------------------------------------------

FirewallBackend = Literal["nft", "legacy"]


class ArpRule(_Value):
    """One arptables rule in a canonical form (chain, target, matches).

    Addresses lose a `/32` (arptables-save drops it too) and opcodes are numbers, as both
    backends print them. `spec` is the rule's argv after `-A CHAIN` with the target moved to the
    end, the order a person writes it in; `extra` holds options no field covers.
    """

    chain: str
    target: str
    source_ip: str | None = None
    destination_ip: str | None = None
    mangle_ip_s: str | None = None
    interface_in: str | None = None
    interface_out: str | None = None
    opcode: str | None = None
    raw: str = ""
    source_mac: str | None = None
    destination_mac: str | None = None
    mangle_ip_d: str | None = None
    mangle_mac_s: str | None = None
    mangle_mac_d: str | None = None
    spec: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()


class ArptablesRules(_Value):
    backend: FirewallBackend | None = None
    chains: tuple[str, ...] = ()
    rules: tuple[ArpRule, ...] = ()
    # Built-in chains map to their policy, user chains to "-".
    policies: dict[str, str] = {}
    # The nft tools warn when the other backend also holds tables: both are then in force.
    legacy_tables_present: bool = False


# --- iptables nat ---------------------------------------------------------------------------------


class IptablesRule(_Value):
    """One `iptables-save -t nat` rule; `spec` is the argv after `-A CHAIN`."""

    chain: str
    spec: tuple[str, ...]
    destination: str | None = None
    protocol: str | None = None
    dport: int | None = None
    target: str | None = None
    source: str | None = None
    in_interface: str | None = None
    out_interface: str | None = None
    to_ports: str | None = None
    comment: str | None = None


class IptablesNat(_Value):
    backend: FirewallBackend | None = None
    rules: tuple[IptablesRule, ...] = ()
    chains: tuple[str, ...] = ()
    policies: dict[str, str] = {}
    legacy_tables_present: bool = False


# --- nftables -------------------------------------------------------------------------------------


class NftTable(_Value):
    family: str
    name: str
    comment: str | None = None
    # The table as `nft -j list table` reports it, handles removed, serialised canonically; states
    # compare it only for tables shoal owns.
    canonical_json: str = ""


class NftRuleset(_Value):
    tables: tuple[NftTable, ...] = ()

    def table(self, family: str, name: str) -> NftTable | None:
        for t in self.tables:
            if t.family == family and t.name == name:
                return t
        return None


# --- IPVS -----------------------------------------------------------------------------------------


IpvsProtocol = Literal["tcp", "udp", "sctp", "fwmark"]
# (protocol, address, port, fwmark): one virtual service. Address and port are "" and 0 for a
# fwmark service, fwmark is 0 for the others.
IpvsServiceKey = tuple[str, str, int, int]


class IpvsService(_Value):
    """One virtual service as `ipvsadm -Sn` saves it (IPv6 addresses without brackets)."""

    protocol: IpvsProtocol
    address: str
    port: int
    scheduler: str
    persistence: int | None = None
    netmask: str | None = None
    flags: tuple[str, ...] = ()
    fwmark: int | None = None
    family: Literal["inet", "inet6"] = "inet"
    pe: str | None = None
    one_packet: bool = False

    @property
    def key(self) -> IpvsServiceKey:
        return (self.protocol, self.address, self.port, self.fwmark or 0)


class IpvsDestination(_Value):
    protocol: IpvsProtocol
    service_address: str
    service_port: int
    address: str
    port: int
    forward: Literal["route", "tunnel", "masq"]
    weight: int
    active_connections: int | None = None
    inactive_connections: int | None = None
    service_fwmark: int | None = None
    tunnel_options: tuple[str, ...] = ()

    @property
    def service_key(self) -> IpvsServiceKey:
        return (self.protocol, self.service_address, self.service_port, self.service_fwmark or 0)


class IpvsTable(_Value):
    """The kernel's IPVS table.

    `available` says the kernel can do IPVS (the module is loaded or installed); `loaded` says
    the table exists now. An unloaded module holds no services, which is a known, empty table.
    """

    available: bool
    services: tuple[IpvsService, ...] = ()
    destinations: tuple[IpvsDestination, ...] = ()
    loaded: bool = False
    # Why the table is empty or partial (module not loaded, counters unreadable, ...).
    detail: str = ""


# --- keepalived, files, tools ---------------------------------------------------------------------


# The largest file whose content the facts carry: a plan shows a diff of it, and every plan
# gathers it from every host (base64 on the wire), so a large file falls back to its digest.
FILE_CONTENT_MAX = 64 * 1024


class KeepalivedInfo(_Value):
    installed: bool
    version: str | None = None
    config_sha256: str | None = None
    running: bool = False


class FileInfo(_Value):
    """One managed path as the facts script saw it.

    `content` is the text of a regular file of at most `FILE_CONTENT_MAX` bytes, gathered so a
    plan can show what a write really changes; it always matches `sha256`. When an existing file
    has no content, `content_unknown_reason` says why (too large, binary, a symbolic link, ...)
    and a plan falls back to the digest.
    """

    path: str
    exists: bool
    sha256: str | None = None
    mode: str | None = None  # octal, e.g. "0644"
    kind: str | None = None  # "regular file", "directory", "symbolic link", ... as stat(1) says
    content: str | None = None
    content_unknown_reason: str | None = None


class Ledger(_Value):
    """What shoal created on this host (read from /var/lib/shoal/ledger.json).

    Only what the ledger lists is ever removed: anything else on the host is someone else's and
    survives. `entries` maps a state function (e.g. "addr.present") to canonical keys of the
    objects shoal owns; `sysctl_originals` keeps each sysctl's value from before shoal changed it,
    so a real server that leaves gets its own values back.
    """

    entries: dict[str, tuple[str, ...]] = {}
    sysctl_originals: dict[str, str] = {}


class Login(_Value):
    """Who the facts script ran as: after sudo, when the host's become is sudo."""

    uid: int
    user: str


class HostFacts(_Value):
    """Every fact of one host, from one round trip."""

    host: str
    hostname: Fact[str]
    interfaces: Fact[tuple[Interface, ...]]
    sysctls: Fact[dict[str, str]]
    arptables: Fact[ArptablesRules]
    iptables_nat: Fact[IptablesNat]
    nft: Fact[NftRuleset]
    ipvs: Fact[IpvsTable]
    keepalived: Fact[KeepalivedInfo]
    files: Fact[dict[str, FileInfo]]
    tools: Fact[dict[str, bool]]
    services: Fact[dict[str, bool]]
    # Filled from /var/lib/shoal/ledger.json; absent file = empty ledger (known),
    # unreadable = unknown.
    ledger: Fact[Ledger] = Fact[Ledger].unknown("not gathered")
    services_enabled: Fact[dict[str, bool]] = Fact[dict[str, bool]].unknown("not gathered")
    kernel_release: Fact[str] = Fact[str].unknown("not gathered")
    login: Fact[Login] = Fact[Login].unknown("not gathered")
    # `ip6tables-save -t nat`: the redirect method's IPv6 rules (the same shape as IPv4's).
    ip6tables_nat: Fact[IptablesNat] = Fact[IptablesNat].unknown(NOT_GATHERED)
    # Why this login cannot act as root here (sudo refused before anything ran); the facts are
    # then all unknown, yet the host answered: the plan blocks it with this message.
    privilege_error: str | None = None

    @classmethod
    def fact_names(cls) -> tuple[str, ...]:
        """The fields that are facts (everything but the host name and the privilege error)."""
        return tuple(
            name
            for name, field in cls.model_fields.items()
            if field.annotation is not None and _is_fact(field.annotation)
        )

    @classmethod
    def all_unknown(cls, host: str, reason: str) -> HostFacts:
        """Facts of a host that could not be read at all (unreachable, script failed)."""
        fields: dict[str, Any] = {name: Fact[Any].unknown(reason) for name in cls.fact_names()}
        return cls(host=host, **fields)

    @property
    def unknown_facts(self) -> dict[str, str]:
        """Name -> reason of every fact that could not be read."""
        out: dict[str, str] = {}
        for name in self.fact_names():
            value: Fact[Any] = getattr(self, name)
            if value.unknown_reason is not None:
                out[name] = value.unknown_reason
        return out

    def digest(self) -> str:
        """A stable digest of every fact; part of a plan's id.

        Connection counters are left out: they move with traffic, and a plan must not go stale
        because a client opened a connection.
        """
        # The model is frozen: the digest is computed once per instance (a plan of 10,000 hosts
        # asks for every host's, and the executor asks again for the stale check).
        entry = _DIGESTS.get(id(self))
        if entry is not None and entry[0]() is self:
            return entry[1]
        value = _digest(self)
        key = id(self)
        _DIGESTS[key] = (weakref.ref(self, lambda _r: _DIGESTS.pop(key, None)), value)
        return value


def _is_fact(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Fact)


_VOLATILE_KEYS = frozenset({"active_connections", "inactive_connections"})
# Facts that joined after plans were first made, each with the older fact it sits beside. One
# that holds nothing (known, without a rule), was never asked, or is unknown for the same
# reason as its sibling (a host that did not answer) adds nothing to the digest and is left
# out, so an IPv4-only host's plan id does not change with shoal's version. Once it holds
# anything, or fails on its own, it counts like any fact.
_LATER_FACTS = {"ip6tables_nat": "iptables_nat"}
# id(facts) -> (weak reference, digest). Not a private attribute: pydantic would copy it into a
# model_copy(update=...) with other facts, and compare it in ==.
_DIGESTS: dict[int, tuple[weakref.ref[HostFacts], str]] = {}
# The volatile keys exist only on IPVS destinations; pydantic leaves them out while dumping.
_EXCLUDE_VOLATILE: dict[str, Any] = {
    "ipvs": {"value": {"destinations": {"__all__": set(_VOLATILE_KEYS)}}}
}


def _holds_nothing(fact: Fact[Any], sibling: Fact[Any]) -> bool:
    if fact.unknown_reason is not None:
        return fact.unknown_reason in (NOT_GATHERED, sibling.unknown_reason)
    return not getattr(fact.value, "rules", ())


def _digest(facts: HostFacts) -> str:
    silent = [
        name
        for name, sibling in _LATER_FACTS.items()
        if _holds_nothing(getattr(facts, name), getattr(facts, sibling))
    ]
    data = facts.model_dump(mode="json", exclude=_EXCLUDE_VOLATILE)
    for name in silent:
        data.pop(name, None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    if any(f'"{k}"' in text for k in _VOLATILE_KEYS):
        # A volatile key elsewhere (say a service of that name): drop it everywhere, as always.
        data = _drop_keys(facts.model_dump(mode="json"), _VOLATILE_KEYS)
        for name in silent:
            data.pop(name, None)
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def later_facts_json(facts: HostFacts) -> str:
    """The facts `digest` may leave out (`_LATER_FACTS`), as JSON: what tells two hosts with
    equal digests apart, if anything."""
    return json.dumps(
        {name: getattr(facts, name).model_dump(mode="json") for name in sorted(_LATER_FACTS)},
        sort_keys=True,
    )


def _drop_keys(data: Any, keys: frozenset[str]) -> Any:
    if isinstance(data, dict):
        return {k: _drop_keys(v, keys) for k, v in data.items() if k not in keys}
    if isinstance(data, list):
        return [_drop_keys(v, keys) for v in data]
    return data
