"""What a verification found: the typed result of the verification phase (values only).

`reconciler.verify.run` produces a `VerificationResult`; the executor keeps it in the run's
result (`reconciler.apply.runresult`), the server stores it and serves it at GET /runs/{id}, and
`shoal verify` prints it. Plain pydantic values, JSON-serialisable; this module does no I/O.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from reconciler.desired.endpoint import service_endpoint


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# "nd": Neighbour Solicitations for an IPv6 VIP, judged as "arp" is for an IPv4 one.
CheckKind = Literal["setup", "probe", "traffic", "director", "arp", "nd", "neighbour"]


class VerificationFailure(_Out):
    check: CheckKind
    host: str | None = Field(description="the host at fault, where one is known")
    message: str

    def __str__(self) -> str:
        return self.message


class RealServerTraffic(_Out):
    host: str
    weight: int
    received: int | None = Field(description="connections counted on the host; None = unknown")
    answered: int = Field(default=0, description="replies whose body named this host")
    via_director: int | None = Field(
        default=None, description="its replies seen by the director (must be 0); None = unknown"
    )


class ServiceTraffic(_Out):
    cluster: str
    service: str
    vip: str
    port: int
    protocol: str
    client: str
    director: str | None
    requests: int
    ok: int
    failed: int
    errors: dict[str, int] = {}
    rounds: int
    real_servers: tuple[RealServerTraffic, ...]
    forward_packets: int | None = Field(description="client -> VIP packets seen by the director")
    return_packets: int | None = Field(description="VIP -> client packets seen by the director")

    @property
    def distribution(self) -> dict[str, int]:
        """Requests per real server (counted on the host, or by the replies' bodies)."""
        return {
            rs.host: rs.received if rs.received is not None else rs.answered
            for rs in self.real_servers
        }


class ArpResponder(_Out):
    mac: str
    host: str | None


class ArpCheck(_Out):
    """Who answered for a VIP asked from a client: ARP (IPv4) or Neighbour Discovery (IPv6)."""

    client: str
    vip: str
    probe: Literal["arp", "nd"] = Field(
        default="arp", description="arp: ARP requests; nd: Neighbour Solicitations (IPv6 VIP)"
    )
    director: str | None = Field(description="the active director: it holds the VIP")
    expected_mac: str | None
    responders: tuple[ArpResponder, ...]
    neighbour_mac: str | None
    neighbour_host: str | None


class VerificationResult(_Out):
    ok: bool
    revision: str = ""
    clients: tuple[str, ...] = ()
    services: tuple[ServiceTraffic, ...] = ()
    arp: tuple[ArpCheck, ...] = ()
    failures: tuple[VerificationFailure, ...] = ()
    notes: tuple[str, ...] = ()
    elapsed: float = 0.0

    def distribution(self) -> dict[str, dict[str, int]]:
        """`vip:port/proto (client)` -> real server -> requests."""
        return {
            f"{service_endpoint(s.vip, s.port, s.protocol)} ({s.client})": s.distribution
            for s in self.services
        }
