"""A real server that leaves keeps its VIP until the directors have drained it.

The director VIP and the real servers' VIP are one address. A removal of that address on a host
that is no director (a real server leaving, its VIP on lo or behind ARP suppression on eth0) is
not a VIP moving between directors: it must run in REAL_SERVERS_CLEANUP, after the directors
stopped sending the host new flows and waited for its connections, never before the primary's
phase (it once ran in DIRECTOR_BACKUP, and clients still pinned to the host timed out).
"""

from __future__ import annotations

import pytest

from reconciler.facts.hostfacts import Fact, Ledger
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Phase
from tests.statecases import VIP_HTTP, cluster_desired, hand_configured
from tests.unit.plan.plan_support import facts_for


@pytest.mark.parametrize(("method", "device"), [("sysctl", "lo"), ("nft-arp", "eth0")])
@pytest.mark.parametrize("director", ["nftables", "ipvsadm"])
def test_leaving_real_server_drops_its_vip_after_the_directors(
    method: str, device: str, director: str
) -> None:
    desired = cluster_desired(method, director=director, real_servers=("web1",))
    ledger = Ledger(entries={"addr.present": (f"{VIP_HTTP}/32 dev {device}",)})
    web2 = hand_configured(method, "web2", [VIP_HTTP]).model_copy(
        update={"ledger": Fact.of(ledger)}
    )
    plan = plan_desired(desired, facts_for(desired, web2=web2))
    # The primary director holds the same address as its VIP.
    assert any(
        s.subsystem == "addr" and s.phase == Phase.DIRECTOR_PRIMARY
        for s in plan.hosts["lvs1"].steps
    ), [s.id for s in plan.hosts["lvs1"].steps]
    removal = [s for s in plan.hosts["web2"].steps if s.id.startswith("web2/remove-addr-")]
    assert len(removal) == 1, [s.id for s in plan.hosts["web2"].steps]
    assert removal[0].phase == Phase.REAL_SERVERS_CLEANUP
