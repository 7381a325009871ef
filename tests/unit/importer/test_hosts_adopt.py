"""Adoption after `shoal import --from-hosts`: on a host that adopts, what the repository wants and
the host already has enters the ledger in the first plan, so that removing a real server from
the repository later removes its hand-made VIP and ARP rules like shoal's own; on a host that
does not adopt, hand-made state is never touched."""

from __future__ import annotations

import json
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


def adopting(repo: Path, *hosts: str) -> Desired:
    """The imported repository with `adopt = true` on `hosts`, as the operator writes it."""
    path = repo / "inventory.toml"
    text = path.read_text()
    for host in hosts:
        assert f"[hosts.{host}]\n" in text, text
        text = text.replace(f"[hosts.{host}]\n", f"[hosts.{host}]\nadopt = true\n")
    path.write_text(text)
    return load_repository(repo)


def imported(tmp_path: Path, facts: dict[str, HostFacts]) -> Path:
    repo = tmp_path / "repo"
    req = ImportRequest(target=repo, known_hosts=REPO / "known_hosts",
                        from_hosts=REPO / "inventory.toml", host_facts=facts)  # fmt: skip
    assert run_import(req).desired is not None
    return repo


def test_an_adopting_host_hands_over_what_matches_and_a_removal_takes_it_away(
    tmp_path: Path,
) -> None:
    facts = seed_site()
    # The directors adopt too: their hand-made IPVS tables become shoal's, so a real server
    # that leaves the repository leaves the directors as well.
    repo = imported(tmp_path, facts)
    desired = adopting(repo, "lvs1", "lvs2")
    first = plan(desired, facts)
    assert "ipvs.real_server_present tcp 10.77.0.100:80 10.77.0.21:80" in ledger_description(
        first, "lvs1")
    # web1 adopts (its correction removes the seed rule): the VIP and the INPUT rule it already
    # has become shoal's; web2 (REDIRECT, nothing to correct) adopts nothing.
    assert ledger_description(first, "web1") == (
        "record what shoal owns on this host (ledger); adopt, made by hand: "
        f"addr.present {VIP1}/32 dev eth0; arptables.rule_present INPUT -d {VIP1} -j DROP")
    assert "adopt" not in ledger_description(first, "web2")

    after = applied(facts, first)
    again = plan(desired, after)
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

    # web2 did not adopt: when it leaves, the (adopting) directors stop sending to it, and its
    # hand-made REDIRECT rule stays (foreign state is never touched).
    gone = plan(without(repo, "lvs-redirect", "web2"), applied(facts, first))
    web2 = gone.hosts.get("web2")
    assert web2 is None or not [s for s in web2.steps if s.subsystem == "iptables"]
    rule = method2("web2").iptables_nat.value
    assert rule is not None and VIP2 in rule.rules[0].spec[1]


def test_directors_that_do_not_adopt_never_own_the_hand_made_ipvs_tables(tmp_path: Path) -> None:
    """A hand-made IPVS service and its real servers that match the repository are in sync, not
    shoal's: without adoption none enters the directors' ledgers, and removing a real server
    from the repository plans nothing on the directors for it."""
    facts = seed_site()
    repo = imported(tmp_path, facts)
    first = plan(load_repository(repo), facts)
    for host in ("lvs1", "lvs2"):
        owned = ledger_entries(first, host)
        assert not owned.get("ipvs.service_present") and not owned.get(
            "ipvs.real_server_present"), (host, owned)
    gone = plan(without(repo, "lvs-redirect", "web2"), applied(facts, first))
    for host in ("lvs1", "lvs2"):
        hp = gone.hosts.get(host)
        assert hp is None or not [s for s in hp.steps if s.subsystem == "ipvs"], host


def ledger_entries(p: Plan, host: str) -> dict[str, list[str]]:
    """What the plan's ledger step writes on `host` ({} when it writes none)."""
    hp = p.hosts.get(host)
    step = next((s for s in hp.steps if s.state_id == LEDGER_STEP), None) if hp else None
    if step is None or step.change is None or step.change.after is None:
        return {}
    entries: dict[str, list[str]] = json.loads(step.change.after)["entries"]
    return entries
