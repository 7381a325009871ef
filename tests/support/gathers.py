"""Stand-ins for the facts round trip that `run_plan` takes as `gather`: typed facts, no SSH."""

from __future__ import annotations

from pathlib import Path

from reconciler.cli.plan import HostDone
from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts
from tests.statecases import fresh_facts

EXAMPLE = Path(__file__).resolve().parents[2] / "fixtures" / "config-repo"


async def fresh(desired: Desired, done: HostDone) -> dict[str, HostFacts]:
    """Every inventory host as a freshly installed machine: nothing of shoal's on it yet."""
    out = {}
    for host, inv in sorted(desired.inventory.hosts.items()):
        out[host] = fresh_facts(host, inv.address, interface=inv.interface)
        done(host, out[host])
    return out
