"""Adoption after `shoal import --from-hosts`: on a host that adopts, what the repository wants and
the host already has enters the ledger in the first plan, so that removing a real server from
the repository later removes its hand-made VIP and ARP rules like shoal's own; on a host that
does not adopt, hand-made state is never touched."""

from __future__ import annotations

import re
from pathlib import Path

from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts
from reconciler.importer.run import ImportRequest, run_import
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Plan
from tests.statecases import after_files, gathered
from tests.unit.importer.live_hosts import VIP1, VIP2, method1, method2, seed_site

ROOT = Path(__file__).resolve().parents[3]
REPO = ROOT / "fixtures" / "config-repo"
LEDGER_STEP = "shoal-ledger"


def plan(desired: Desired, facts: dict[str, HostFacts]) -> Plan:
    paths = managed_paths(desired)
    return plan_desired(desired, {h: gathered(f, paths.get(h, ())) for h, f in facts.items()})


def ledger_description(p: Plan, host: str) -> str:
    return next(s.description for s in p.hosts[host].steps if s.state_id == LEDGER_STEP)


def applied(facts: dict[str, HostFacts], p: Plan) -> dict[str, HostFacts]:
    """The hosts after `p`: web1 and web3 with the corrected rule, every file and ledger written."""
    out = after_files(facts, p)
    for host in ("web1", "web3"):
        fixed = method1(host, output="-s")
        out[host] = out[host].model_copy(update={"arptables": fixed.arptables})
    return out


def without(repo: Path, cluster: str, host: str) -> Desired:
    path = repo / "clusters" / f"{cluster}.toml"
    text = path.read_text()
    block = re.compile(r'\n  \[\[service\.real_server\]\][^\n]*\n  host = "' + host +
                       r'"\n  weight = \d+\n')  # fmt: skip
    assert block.search(text), text
    path.write_text(block.sub("\n", text))
    return load_repository(repo)


def test_an_adopting_host_hands_over_what_matches_and_a_removal_takes_it_away(
    tmp_path: Path,
) -> None:
    facts = seed_site()
    repo = tmp_path / "repo"
    req = ImportRequest(target=repo, known_hosts=REPO / "known_hosts",
                        from_hosts=REPO / "inventory.toml", host_facts=facts)  # fmt: skip
    result = run_import(req)
    assert result.desired is not None
    first = plan(result.desired, facts)
    # web1 adopts (its correction removes the seed rule): the VIP and the INPUT rule it already
    # has become shoal's; web2 (REDIRECT, nothing to correct) adopts nothing.
    assert ledger_description(first, "web1") == (
        "record what shoal owns on this host (ledger); adopt, made by hand: "
        f"addr.present {VIP1}/32 dev eth0; arptables.rule_present INPUT -d {VIP1} -j DROP")
    assert "adopt" not in ledger_description(first, "web2")

    after = applied(facts, first)
    again = plan(result.desired, after)
    assert again.empty, [(s.host, s.description) for hp in again.hosts.values() for s in hp.steps]

    # web1 leaves: its hand-made VIP and INPUT rule go with shoal's OUTPUT rule, VIP first.
    leave = plan(without(repo, "lvs-arptables", "web1"), after)
    web1 = [s.description for s in leave.hosts["web1"].steps if s.subsystem in ("addr", "arp")]
    assert web1 == [
        f"remove {VIP1}/32 from eth0",
        f"remove arptables rule INPUT -d {VIP1} -j DROP",
        f"remove arptables rule OUTPUT -s {VIP1} -j mangle --mangle-ip-s 10.77.0.21",
    ], web1
    directors = [s.description for h in ("lvs1", "lvs2") for s in leave.hosts[h].steps
                 if s.subsystem == "ipvs"]  # fmt: skip
    assert directors and all("10.77.0.21" in d for d in directors), directors

    # web2 did not adopt: when it leaves, the directors stop sending to it, and its hand-made
    # REDIRECT rule stays (foreign state is never touched).
    gone = plan(without(repo, "lvs-redirect", "web2"), applied(facts, first))
    web2 = gone.hosts.get("web2")
    assert web2 is None or not [s for s in web2.steps if s.subsystem == "iptables"]
    rule = method2("web2").iptables_nat.value
    assert rule is not None and VIP2 in rule.rules[0].spec[1]
