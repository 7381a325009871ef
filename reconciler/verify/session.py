"""What one verification shares between its steps: the hosts' links, the failures and notes so
far, and the one way it asks a host anything (`Session.run`, over the `Transport`).

`reconciler.verify.run` fills the links and orders the steps; `reconciler.verify.traffic` and
`reconciler.verify.arp` probe through the same session.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts, Interface
from reconciler.transport.protocol import Transport
from reconciler.verify.judge import Inspection
from reconciler.verify.result import CheckKind, VerificationFailure


class Session:
    def __init__(
        self,
        desired: Desired,
        transport: Transport,
        facts: Mapping[str, HostFacts] | None,
        clusters: Iterable[str] | None,
    ) -> None:
        self.desired = desired
        self.t = transport
        self.facts = facts or {}
        self.cfg = desired.settings.verify
        names = list(clusters) if clusters is not None else list(desired.clusters)
        self.clusters = {n: desired.clusters[n] for n in names}
        self.failures: list[VerificationFailure] = []
        self.notes: list[str] = []
        # Filled by the inspection; `seen` reads the same dict.
        self.links: dict[str, tuple[Interface, ...]] = {}
        interfaces = {h: inv.interface for h, inv in desired.inventory.hosts.items()}
        self.seen = Inspection(self.links, interfaces, self.facts)

    def fail(self, check: CheckKind, host: str | None, message: str) -> None:
        self.failures.append(VerificationFailure(check=check, host=host, message=message))

    def iface(self, host: str) -> str:
        return self.desired.inventory.hosts[host].interface

    def addr(self, host: str) -> str:
        return self.desired.inventory.hosts[host].address

    async def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout: float | None = None,
    ) -> tuple[int | None, str, str]:
        res = await self.t.run(host, tuple(argv), input=input, timeout=timeout, check=False)
        return res.exit_status, str(res.stdout), str(res.stderr)
