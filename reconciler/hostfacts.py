"""Typed facts of one host: what it really is, as read by the facts script.

This module owns the value types only. Parsing the tools' output lives in `reconciler.parsers`,
the remote script and gathering in `reconciler.facts`.

Every fact is a `Fact[T]`: either known (with a value) or unknown (with the reason). An unknown
fact is never "absent": a state that would remove something on the grounds of an unknown fact
must not plan the removal and must say why.
"""

from __future__ import annotations

import hashlib
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class Interface(_Value):
    name: str
    mac: str | None = None
    up: bool = False
    addresses: tuple[Address, ...] = ()


# --- ARP filtering --------------------------------------------------------------------------------

FirewallBackend = Literal["nft", "legacy"]


class ArpRule(_Value):
    """One arptables rule in a canonical form (chain, target, matches)."""

    chain: str
    target: str
    source_ip: str | None = None
    destination_ip: str | None = None
    mangle_ip_s: str | None = None
    interface_in: str | None = None
    interface_out: str | None = None
    opcode: str | None = None
    raw: str = ""


class ArptablesRules(_Value):
    backend: FirewallBackend | None = None
    chains: tuple[str, ...] = ()
    rules: tuple[ArpRule, ...] = ()


# --- iptables nat ---------------------------------------------------------------------------------


class IptablesRule(_Value):
    """One `iptables-save -t nat` rule; `spec` is the argv after `-A CHAIN`."""

    chain: str
    spec: tuple[str, ...]
    destination: str | None = None
    protocol: str | None = None
    dport: int | None = None
    target: str | None = None


class IptablesNat(_Value):
    backend: FirewallBackend | None = None
    rules: tuple[IptablesRule, ...] = ()


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


class IpvsService(_Value):
    protocol: Literal["tcp", "udp", "sctp", "fwmark"]
    address: str
    port: int
    scheduler: str
    persistence: int | None = None
    netmask: str | None = None
    flags: tuple[str, ...] = ()


class IpvsDestination(_Value):
    protocol: Literal["tcp", "udp", "sctp", "fwmark"]
    service_address: str
    service_port: int
    address: str
    port: int
    forward: Literal["route", "tunnel", "masq"]
    weight: int
    active_connections: int | None = None
    inactive_connections: int | None = None


class IpvsTable(_Value):
    available: bool
    services: tuple[IpvsService, ...] = ()
    destinations: tuple[IpvsDestination, ...] = ()


# --- keepalived, files, tools ----------------------------------------------------------------------


class KeepalivedInfo(_Value):
    installed: bool
    version: str | None = None
    config_sha256: str | None = None
    running: bool = False


class FileInfo(_Value):
    path: str
    exists: bool
    sha256: str | None = None
    mode: str | None = None  # octal, e.g. "0644"


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

    def digest(self) -> str:
        """A stable digest of every fact; part of a plan's id."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()
