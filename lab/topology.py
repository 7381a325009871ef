"""Which hosts a lab has: names, roles and their fixed place (last octet) in the lab's /24.

Addresses follow the contract every fixture relies on: directors .11-.19, real servers .21-.29
(web1 is .21), clients .31-.39, the controller .254, VIPs .100-.199. Real servers beyond the
ninth continue in .40-.99 and then .200-.253, so the VIP range and the other roles stay free.

A host is of kind `netns` (namespaces on this machine, the default) or `vm` (a qemu virtual
machine with its own kernel, lab/vm.py: a real IPVS director where this kernel has no IPVS).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Role = Literal["director", "real_server", "client"]
HostKind = Literal["netns", "vm"]

CONTROLLER_OCTET = 254
VIP_OCTETS = range(100, 200)

_DIRECTOR_OCTETS = tuple(range(11, 20))
_REAL_SERVER_OCTETS = (*range(21, 30), *range(40, 100), *range(200, 254))
_CLIENT_OCTETS = tuple(range(31, 40))

# A host name becomes a hostname, a namespace name and a file name: keep it plain.
_HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


@dataclass(frozen=True, slots=True)
class HostSpec:
    """One host of a topology: its name, role and last address octet, and what it runs on.

    `memory_mib` and `cpus` size a `vm` host (lab/vm.py's defaults) and are ignored otherwise.
    """

    name: str
    role: Role
    octet: int
    kind: HostKind = "netns"
    memory_mib: int = 512
    cpus: int = 1


@dataclass(frozen=True, slots=True)
class Topology:
    """The hosts of a lab. Build one with `default()`, `with_real_servers(n)` or `build(...)`."""

    hosts: tuple[HostSpec, ...]

    def __post_init__(self) -> None:
        names = [h.name for h in self.hosts]
        octets = [h.octet for h in self.hosts]
        if not names:
            raise ValueError("a topology needs at least one host")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate host names in {names}")
        if len(set(octets)) != len(octets):
            raise ValueError(f"two hosts share an address octet in {octets}")
        for h in self.hosts:
            if not _HOST_NAME_RE.match(h.name):
                raise ValueError(f"{h.name!r} is not a lab host name (a-z, 0-9, '-')")
            if not 1 <= h.octet <= 253 or h.octet in VIP_OCTETS:
                raise ValueError(f"{h.name}: octet {h.octet} is outside the host ranges")

    @classmethod
    def build(
        cls,
        directors: int = 2,
        real_servers: int = 3,
        clients: int = 1,
        *,
        director_kind: HostKind = "netns",
    ) -> Topology:
        """lvs1..lvsN, web1..webN, client1..clientN at their contract addresses.

        `director_kind="vm"` makes the directors virtual machines (real IPVS, lab/vm.py).
        """
        if not 0 <= directors <= len(_DIRECTOR_OCTETS):
            raise ValueError(f"directors must be 0..{len(_DIRECTOR_OCTETS)}")
        if not 0 <= real_servers <= len(_REAL_SERVER_OCTETS):
            raise ValueError(f"real_servers must be 0..{len(_REAL_SERVER_OCTETS)}")
        if not 0 <= clients <= len(_CLIENT_OCTETS):
            raise ValueError(f"clients must be 0..{len(_CLIENT_OCTETS)}")
        hosts = [
            HostSpec(f"lvs{i + 1}", "director", _DIRECTOR_OCTETS[i], director_kind)
            for i in range(directors)
        ]
        hosts += [
            HostSpec(f"web{i + 1}", "real_server", _REAL_SERVER_OCTETS[i])
            for i in range(real_servers)
        ]
        hosts += [HostSpec(f"client{i + 1}", "client", _CLIENT_OCTETS[i]) for i in range(clients)]
        return cls(tuple(hosts))

    @classmethod
    def default(cls, *, director_kind: HostKind = "netns") -> Topology:
        """lvs1 lvs2 (directors), web1 web2 web3 (real servers), client1."""
        return cls.build(director_kind=director_kind)

    @classmethod
    def with_real_servers(cls, n: int) -> Topology:
        """The default directors and client with `n` real servers (for benchmarks)."""
        return cls.build(real_servers=n)

    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def spec(self, name: str) -> HostSpec:
        return next(h for h in self.hosts if h.name == name)
