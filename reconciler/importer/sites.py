"""What an import source describes, before it becomes TOML: clusters, services, real servers.

Every object remembers where it was read (`Origin`: file and line), so that a conflict between
two sources and every construct shoal cannot represent (`Dropped`) is reported at its place.
Addresses are canonical text (`ipaddress`), protocols lower case, as the desired models want.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from reconciler.errors import ConfigIssue

# Shared with the keepalived state, which reads installed files with the same reader.
from states.keepalived_syntax import Origin as Origin

CheckType = Literal["tcp", "http", "none"]


@dataclass(frozen=True, slots=True)
class Dropped:
    """A construct of the source that the written repository does not carry, and why."""

    origin: Origin
    construct: str
    why: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.construct}: {self.why}"


@dataclass(frozen=True, slots=True)
class ImportedCheck:
    type: CheckType = "tcp"
    path: str = "/"
    expect: int = 200
    interval: int = 5
    timeout: int = 3


@dataclass(slots=True)
class ImportedRealServer:
    address: str
    port: int
    weight: int
    origin: Origin
    name: str | None = None  # lvs.cf names its servers; keepalived.conf does not


@dataclass(slots=True)
class ImportedService:
    vip: str
    port: int
    protocol: str
    origin: Origin
    scheduler: str = "wlc"
    persistence: int = 0
    check: ImportedCheck = ImportedCheck()
    real_servers: list[ImportedRealServer] = field(default_factory=list)
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ImportedVrrp:
    virtual_router_id: int
    priority_primary: int
    priority_backup: int
    advert_interval: int
    origin: Origin


@dataclass(slots=True)
class ImportedDirector:
    """A director as a source names it: by address (lvs.cf), by name, or both."""

    role: Literal["primary", "backup"]
    origin: Origin
    address: str | None = None
    name: str | None = None
    interface: str | None = None


@dataclass(slots=True)
class ImportedCluster:
    name: str
    backend: Literal["keepalived", "ipvsadm", "nftables"]
    origin: Origin
    directors: list[ImportedDirector] = field(default_factory=list)
    services: list[ImportedService] = field(default_factory=list)
    vrrp: ImportedVrrp | None = None
    # The real servers' ARP method as the hosts show it; None: the request's --arp-method.
    arp_method: str | None = None


@dataclass(slots=True)
class ImportedSite:
    """Everything the sources describe, and what had to be left out."""

    clusters: list[ImportedCluster] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    # What was read with an assumption the operator should know (a default filled in).
    notes: list[str] = field(default_factory=list)
    # Known-bad patterns found on the hosts; the first plan corrects each one.
    findings: list[Finding] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Finding:
    """A known-bad pattern on a live host (`pattern` names it), and what the first plan does.

    `adopt`: the correction takes away something made by hand (the seed's `-d` rule, a VIP on
    the client-facing interface), which shoal does only on a host that adopts (`adopt = true`).
    """

    host: str
    pattern: str
    detail: str
    adopt: bool = False

    def __str__(self) -> str:
        return f"{self.host}: {self.pattern}: {self.detail}"


class ImportSourceInvalid(ValueError):
    """A source file cannot be read as its format: nothing is written."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def issue_at(origin: Origin, message: str, column: int | None = None) -> ConfigIssue:
    return ConfigIssue(file=origin.file, message=message, line=origin.line, column=column)
