"""A second plan that only adds a real server (the demo's "web3 joins with weight 3").

Regression for a report from the demo: after a first apply, the plan adding web3 also removed
shoal-restore, its unit and 90-shoal-lvs-dr.conf from lvs1/lvs2/web1/web2 while it re-wrote
shoal-restore. Here, for every director backend and ARP method, the first plan's files and
ledger are taken as written (tests.statecases.after_files), the cluster gains web3, and the
second plan must remove nothing anywhere, leave every persistence file in the ledgers, and
give web3 its own.
"""

from __future__ import annotations

import pytest

from reconciler.desired.models import Desired, RealServer
from reconciler.facts.hostfacts import HostFacts
from reconciler.facts.script import DEFAULT_FILES
from reconciler.plan.compile import managed_paths
from reconciler.plan.persistence import RESTORE_SCRIPT, RESTORE_UNIT, RESTORE_UNIT_PATH
from reconciler.plan.planner import plan_desired
from states.sysctl import SYSCTL_CONF
from tests.statecases import after_files, all_fresh, cluster_desired, gathered

DIRECTORS = ("keepalived", "ipvsadm", "nftables")
METHODS = ("sysctl", "arptables", "nft-arp", "redirect")


def _with_web3(desired: Desired, weight: int = 3) -> Desired:
    web = desired.clusters["web"]
    http = web.services[0]
    http = http.model_copy(
        update={"real_servers": (*http.real_servers, RealServer(host="web3", weight=weight))}
    )
    web = web.model_copy(update={"services": (http, *web.services[1:])})
    return desired.model_copy(update={"clusters": {"web": web}, "revision": "rev2"})


def _gathered(desired: Desired, facts: dict[str, HostFacts]) -> dict[str, HostFacts]:
    """The files facts as the facts script reports them (its defaults, then the planner's)."""
    paths = managed_paths(desired)
    return {h: gathered(f, [*DEFAULT_FILES, *paths.get(h, [])]) for h, f in facts.items()}


@pytest.mark.parametrize("director", DIRECTORS)
@pytest.mark.parametrize("method", METHODS)
def test_adding_a_real_server_removes_nothing(director: str, method: str) -> None:
    first_desired = cluster_desired(method, director=director, real_servers=("web1", "web2"))
    facts = _gathered(first_desired, all_fresh())
    first = plan_desired(first_desired, facts)
    after_first = after_files(facts, first)
    owned_first = {h: _owned(after_first[h]) for h in after_first}
    for host in ("web1", "web2"):
        assert {RESTORE_SCRIPT, RESTORE_UNIT_PATH} <= owned_first[host][0], host

    second_desired = _with_web3(first_desired)
    second = plan_desired(second_desired, _gathered(second_desired, after_first))
    steps = [s for hp in second.hosts.values() for s in hp.steps]
    removals = [s.id for s in steps if s.state_id.startswith("remove-") or "absent" in s.function]
    assert removals == [], removals
    assert not any(cmd[:2] == ("rm", "-f") for s in steps for cmd in s.commands)
    assert {s.state_id for s in second.hosts["web3"].steps} >= {
        "persist-restore-script", "persist-restore-unit", "persist-restore-enabled",
    }  # fmt: skip

    # Every host keeps what it owned after the first apply; web3 gains its persistence.
    after_second = after_files(_gathered(second_desired, after_first), second)
    for host in ("lvs1", "lvs2", "web1", "web2", "web3"):
        files, units = _owned(after_second[host])
        assert files >= owned_first[host][0] and units >= owned_first[host][1], host
    files, units = _owned(after_second["web3"])
    assert {RESTORE_SCRIPT, RESTORE_UNIT_PATH} <= files and RESTORE_UNIT in units
    if method == "sysctl":
        assert SYSCTL_CONF in files


def _owned(facts: HostFacts) -> tuple[set[str], set[str]]:
    """The files and units the host's ledger says shoal created."""
    ledger = facts.ledger.value
    assert ledger is not None
    entries = ledger.entries
    return set(entries.get("file.managed", ())), set(entries.get("service.enabled", ()))
