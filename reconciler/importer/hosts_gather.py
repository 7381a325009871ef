"""The one I/O `--from-hosts` does: the ordinary facts round trip to every inventory host.

One script per host over SSH (`reconciler.facts.gather`), the host keys pinned by the
known_hosts the operator gives; besides the files every plan reads, the import asks for the
usual boot files of a hand-made setup (`hosts_arp.BOOT_FILES`), so it can say which host would
lose its setup at the next reboot. Nothing is changed on any host.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.desired.models import Inventory
from reconciler.facts.gather import gather_facts
from reconciler.facts.hostfacts import HostFacts
from reconciler.importer.hosts_arp import BOOT_FILES
from reconciler.transport.ssh import SSHTransport


async def gather_inventory_facts(
    inventory: Inventory, known_hosts: str, client_key: Path
) -> dict[str, HostFacts]:
    """Every inventory host's facts; a host that cannot be read has every fact unknown."""
    hosts = sorted(inventory.hosts)
    async with SSHTransport(inventory, known_hosts, client_key) as transport:
        return await gather_facts(transport, hosts, {h: list(BOOT_FILES) for h in hosts})
