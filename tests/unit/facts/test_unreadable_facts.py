"""What a login without rights sees is unknown, never absent, and an unknown fact blocks its host.

The facts part parses output of the real facts script captured over SSH as a non-root user of a
lab host, whose ledger sat behind a 0700 /var/lib/shoal (fixtures/facts/facts_script/
non_root_login.txt); the planning part plans the fixture cluster on facts where one host's
ledger, or one fact a state needs, could not be read.
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from reconciler.cli.plan import EXIT_ERROR, exit_status, render_plan, summary
from reconciler.facts.hostfacts import ArptablesRules, Fact, Ledger
from reconciler.facts.parse import Section, parse_facts_output
from reconciler.facts.script import DENIED
from reconciler.plan.planner import LEDGER_PATH, plan_desired
from tests.statecases import all_fresh, cluster_desired

CAPTURE = Path(__file__).resolve().parents[3] / "fixtures/facts/facts_script/non_root_login.txt"
DENIED_LEDGER = f"{LEDGER_PATH}: Permission denied"


def test_non_root_capture_unreadable_paths_are_unknown_with_the_path() -> None:
    facts = parse_facts_output("web3", CAPTURE.read_text())
    assert not facts.ledger.known and facts.ledger.unknown_reason == DENIED_LEDGER
    # The ledger was a managed path too: the file list cannot say it is missing.
    assert not facts.files.known and facts.files.unknown_reason == DENIED_LEDGER
    # keepalived's pid file may be in the same directory: whether it runs is unknown.
    assert facts.keepalived.unknown_reason == "/var/lib/shoal/keepalived.pid: Permission denied"
    # Listing rules needs root: unknown with the tool's own words, never "not installed".
    for fact in (facts.arptables, facts.iptables_nat, facts.nft):
        assert not fact.known and "not installed" not in str(fact.unknown_reason)
    assert "you must be root" in str(facts.arptables.unknown_reason)
    # The sbin tools are found although the user's PATH lacks /usr/sbin.
    assert facts.tools.value is not None
    assert all(facts.tools.value[t] for t in ("nft", "iptables", "arptables", "sysctl"))
    # What a user may read is read.
    assert facts.sysctls.known and facts.interfaces.known and facts.hostname.known


def test_denied_section_reason_is_the_scripts_line_or_says_permission() -> None:
    with_line = Section("ledger", "", DENIED, "/x/y: Permission denied\n")
    assert with_line.reason("ledger") == "/x/y: Permission denied"
    bare = Section("ledger", "", DENIED, "")
    assert bare.reason("/x/y") == "/x/y exited 13"
    assert Section("nft", "", 127, "nft is not installed\n").reason("nft").startswith(
        "nft: not installed"
    )


def test_unknown_ledger_blocks_every_change_on_that_host_and_names_it() -> None:
    desired = cluster_desired("sysctl")
    f = all_fresh()
    fresh_plan = plan_desired(desired, f)
    assert fresh_plan.hosts["web2"].steps and fresh_plan.hosts["web2"].blocked is None
    f["web2"] = f["web2"].model_copy(update={"ledger": Fact[Ledger].unknown(DENIED_LEDGER)})
    plan = plan_desired(desired, f)
    hp = plan.hosts["web2"]
    assert hp.reachable and hp.steps == () and hp.blocked == f"web2: {DENIED_LEDGER}"
    assert any(s.fact_unknown and LEDGER_PATH in s.reason for s in hp.skipped)
    # The other hosts are planned as before.
    for host in ("web1", "lvs1", "lvs2"):
        assert plan.hosts[host].steps == fresh_plan.hosts[host].steps
    assert exit_status(plan) == EXIT_ERROR
    assert summary(plan)["hosts_blocked"] == {"web2": f"web2: {DENIED_LEDGER}"}
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print("\n".join(render_plan(plan)))
    assert f"blocked: web2: {DENIED_LEDGER}: nothing is changed on web2" in buf.getvalue()


def test_a_ledger_reason_without_the_path_gets_it() -> None:
    f = all_fresh()
    f["web1"] = f["web1"].model_copy(update={"ledger": Fact[Ledger].unknown("cut short")})
    hp = plan_desired(cluster_desired("sysctl"), f).hosts["web1"]
    assert hp.blocked == f"web1: {LEDGER_PATH}: cut short" and not hp.steps


def test_unknown_fact_a_state_needs_blocks_the_host_not_just_that_state() -> None:
    # arptables unknown: planning the VIP on eth0 without its ARP rules would let web1 answer
    # ARP for it; the whole host waits.
    desired = cluster_desired("arptables")
    f = all_fresh()
    assert plan_desired(desired, f).hosts["web1"].steps
    why = "arptables -L -n exited 4: Permission denied (you must be root)"
    f["web1"] = f["web1"].model_copy(update={"arptables": Fact[ArptablesRules].unknown(why)})
    hp = plan_desired(desired, f).hosts["web1"]
    assert hp.steps == () and hp.blocked is not None
    assert hp.blocked.startswith("web1: ") and why in hp.blocked
    # Skips that are not about an unreadable fact (a key this kernel lacks) block nothing.
    fresh = plan_desired(cluster_desired("sysctl", director="ipvsadm"), all_fresh())
    assert any(hp.skipped for hp in fresh.hosts.values())
    assert all(hp.blocked is None for hp in fresh.hosts.values())
