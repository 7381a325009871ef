"""The LVS-DR safety invariants in every plan (reconciler.plan.invariants),
on hand-configured hosts.

web3 is set up the way the seed HOWTO says (method 1, chains corrected to INPUT/OUTPUT):
`INPUT -d VIP -j DROP`, the ineffective `OUTPUT -d VIP -j mangle --mangle-ip-s RIP`, and the
VIP on eth0, none of it in shoal's ledger.
"""

from __future__ import annotations

from reconciler.cli.plan import EXIT_CHANGES, exit_status, render_plan
from reconciler.desired.models import Desired, ExtraState, Host
from reconciler.facts.hostfacts import ArpRule, Fact, HostFacts, Ledger, NftTable
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Plan
from states.nft import ARP_TABLE, NftTableArgs, arp_table_args, digest
from tests.statecases import (
    HOSTS,
    VIP_HTTP,
    add_addresses,
    add_arp_rules,
    add_nft_tables,
    arp_input_drop,
    arp_output_mangle,
    cluster_desired,
    fresh_facts,
    shoal_arp_table_json,
)
from tests.unit.plan.plan_support import facts_for

RIP = HOSTS["web3"]
SHOAL_OUTPUT = f"OUTPUT -s {VIP_HTTP} -j mangle --mangle-ip-s {RIP}"


def seed_mangle(vip: str, rip: str) -> ArpRule:
    """The HOWTO's `-A OUTPUT -d VIP -j mangle --mangle-ip-s RIP`, as arptables-save prints it."""
    return ArpRule(chain="OUTPUT", target="mangle", destination_ip=vip, mangle_ip_s=rip,
                   spec=("-d", vip, "-j", "mangle", "--mangle-ip-s", rip),
                   raw=f"-A OUTPUT -j mangle -d {vip} --mangle-ip-s {rip}")  # fmt: skip


def seed_host(*, rules: bool = True, ledger: Ledger | None = None) -> HostFacts:
    f = add_addresses(fresh_facts("web3"), [("eth0", VIP_HTTP, 32)])
    if rules:
        f = add_arp_rules(f, [arp_input_drop(VIP_HTTP), seed_mangle(VIP_HTTP, RIP)])
    return f.model_copy(update={"ledger": Fact.of(ledger or Ledger())})


def adopting(desired: Desired, host: str) -> Desired:
    hosts = dict(desired.inventory.hosts)
    hosts[host] = hosts[host].model_copy(update={"adopt": True})
    inventory = desired.inventory.model_copy(update={"hosts": hosts})
    return desired.model_copy(update={"inventory": inventory})


def commands(plan: Plan, host: str) -> list[tuple[str, ...]]:
    return [argv for s in plan.hosts[host].steps for argv in s.commands]


def test_taking_over_a_seed_host_adds_the_s_rule_and_names_the_ineffective_d_rule() -> None:
    desired = cluster_desired("arptables")
    plan = plan_desired(desired, facts_for(desired, web3=seed_host()))
    hp = plan.hosts["web3"]
    assert not hp.violations
    assert ("arptables", "-A", *SHOAL_OUTPUT.split()) in commands(plan, "web3")
    # The INPUT rule and the VIP are there already: not added again.
    assert not [a for a in commands(plan, "web3") if a[:3] == ("ip", "addr", "add")]
    fixed, seed = hp.notes
    assert fixed.startswith(f"fixed by this plan: web3 holds {VIP_HTTP}/32 on eth0")
    assert f"-A OUTPUT -d {VIP_HTTP} -j mangle --mangle-ip-s {RIP}" in seed
    assert "seed HOWTO's -d form" in seed and "ineffective" in seed
    assert any("ineffective" in line for line in render_plan(plan))


def test_adopt_removes_the_ineffective_d_rule() -> None:
    desired = adopting(cluster_desired("arptables"), "web3")
    plan = plan_desired(desired, facts_for(desired, web3=seed_host()))
    assert ("arptables", "-D", "OUTPUT", "-d", VIP_HTTP, "-j", "mangle", "--mangle-ip-s",
            RIP) in commands(plan, "web3")  # fmt: skip
    assert not plan.hosts["web3"].violations


def kept_suppression_plan(desired: Desired) -> tuple[Plan, HostFacts]:
    """web3 with the hand-added VIP on eth0 and shoal's OUTPUT rule in its ledger: the plan
    removes none of its arptables rules (the VIP still needs them) and refuses nothing."""
    ledger = Ledger(entries={"arptables.rule_present": (SHOAL_OUTPUT,)})
    web3 = add_arp_rules(seed_host(ledger=ledger), [arp_output_mangle(VIP_HTTP, RIP)])
    plan = plan_desired(desired, facts_for(desired, web3=web3))
    hp = plan.hosts["web3"]
    assert not hp.violations
    assert not [a for a in commands(plan, "web3") if a[:2] == ("arptables", "-D")]
    return plan, web3


def test_switching_to_sysctl_keeps_shoals_suppression_while_the_hand_added_vip_stays() -> None:
    plan, _ = kept_suppression_plan(cluster_desired("sysctl"))
    hp = plan.hosts["web3"]
    (kept,) = [s for s in hp.skipped if s.state_id.startswith("remove-arptables")]
    assert f"{VIP_HTTP}/32 stays on eth0" in kept.reason
    assert exit_status(plan) == EXIT_CHANGES  # never "in sync" while it is kept
    # The ledger keeps the rule: a later plan may still remove it.
    (ledger_step,) = [s for s in hp.steps if s.state_id == "shoal-ledger"]
    assert SHOAL_OUTPUT in ledger_step.writes[0].content


def test_a_vip_on_eth0_without_arp_rules_under_sysctl_refuses_the_host() -> None:
    desired = cluster_desired("sysctl")
    plan = plan_desired(desired, facts_for(desired, web3=seed_host(rules=False)))
    hp = plan.hosts["web3"]
    assert hp.steps == ()
    (violation,) = hp.violations
    assert violation.startswith(f"web3 holds {VIP_HTTP}/32 on eth0, but no INPUT rule")
    assert "no OUTPUT rule" in violation and "(after this plan too)" in violation
    assert exit_status(plan) == EXIT_CHANGES
    assert plan.refused == {"web3": hp.violations}
    text = "\n".join(render_plan(plan))
    assert "web3: refused" in text and "1 refused" in text


def test_adopt_takes_the_hand_added_vip_off_eth0_instead() -> None:
    desired = adopting(cluster_desired("sysctl"), "web3")
    plan = plan_desired(desired, facts_for(desired, web3=seed_host(rules=False)))
    hp = plan.hosts["web3"]
    assert not hp.violations
    assert ("ip", "addr", "del", f"{VIP_HTTP}/32", "dev", "eth0") in commands(plan, "web3")
    assert ("ip", "addr", "add", f"{VIP_HTTP}/32", "dev", "lo") in commands(plan, "web3")


def test_a_removed_real_server_keeps_its_suppression_while_the_hand_added_vip_stays() -> None:
    desired = cluster_desired("arptables", real_servers=("web1", "web2"))
    plan, web3 = kept_suppression_plan(desired)
    assert any("stays on eth0" in s.reason for s in plan.hosts["web3"].skipped)
    # With adopt, the VIP goes first, then the suppression.
    plan = plan_desired(adopting(desired, "web3"), facts_for(desired, web3=web3))
    cmds = commands(plan, "web3")
    vip_del = cmds.index(("ip", "addr", "del", f"{VIP_HTTP}/32", "dev", "eth0"))
    rule_del = cmds.index(("arptables", "-D", *SHOAL_OUTPUT.split()))
    assert vip_del < rule_del


def test_the_nft_arp_table_is_kept_while_a_hand_added_vip_stays_on_eth0() -> None:
    desired = cluster_desired("sysctl")
    args = NftTableArgs.model_validate(arp_table_args([VIP_HTTP], RIP))
    comment = f"shoal:{digest(args)}"
    table = NftTable(family="arp", name=ARP_TABLE, comment=comment,
                     canonical_json=shoal_arp_table_json([VIP_HTTP], RIP, comment))  # fmt: skip
    ledger = Ledger(entries={"nft.table_present": (f"arp {ARP_TABLE}",)})
    web3 = add_nft_tables(seed_host(rules=False, ledger=ledger), [table])
    plan = plan_desired(desired, facts_for(desired, web3=web3))
    hp = plan.hosts["web3"]
    assert not hp.violations
    assert not [a for a in commands(plan, "web3") if "delete" in " ".join(a)]
    assert any(s.state_id == "remove-nft-arp_shoal_arp" for s in hp.skipped)


def test_a_plan_that_would_put_a_vip_on_eth0_unguarded_is_refused() -> None:
    vip_on_eth0 = ExtraState(id="hand-vip", function="addr.present", hosts=("web3",),
                             args={"address": VIP_HTTP, "interface": "eth0"})  # fmt: skip
    desired = cluster_desired("sysctl", extras=(vip_on_eth0,))
    plan = plan_desired(desired, facts_for(desired))
    hp = plan.hosts["web3"]
    assert hp.steps == ()
    (violation,) = hp.violations
    assert violation.startswith(f"after this plan: web3 holds {VIP_HTTP}/32 on eth0")


def test_directors_and_guarded_hosts_in_sync_have_no_findings() -> None:
    desired = cluster_desired("arptables")
    hand = add_addresses(fresh_facts("web3"), [("eth0", VIP_HTTP, 32)])
    hand = add_arp_rules(hand, [arp_input_drop(VIP_HTTP), arp_output_mangle(VIP_HTTP, RIP)])
    lvs1 = add_addresses(fresh_facts("lvs1"), [("eth0", VIP_HTTP, 32)])
    plan = plan_desired(desired, facts_for(desired, web3=hand, lvs1=lvs1))
    assert not plan.refused
    assert not plan.hosts["web3"].notes and not plan.hosts["lvs1"].notes


def test_unknown_arp_rules_make_a_held_vip_a_violation() -> None:
    desired = cluster_desired("sysctl")
    web3 = seed_host(rules=False).model_copy(
        update={"arptables": Fact.unknown("arptables-save failed")}
    )
    plan = plan_desired(desired, facts_for(desired, web3=web3))
    (violation,) = plan.hosts["web3"].violations
    assert "unknown" in violation and "arptables-save failed" in violation


def test_host_adopt_defaults_off() -> None:
    assert Host(name="web3", address=RIP).adopt is False
    assert not cluster_desired("sysctl").adopts("web3")


# --- tables the xtables-nft tools made for shoal's rules ------------------------------------------


def test_the_first_arptables_rule_records_the_table_it_makes() -> None:
    desired = cluster_desired("arptables")
    plan = plan_desired(desired, facts_for(desired))
    (ledger_step,) = [s for s in plan.hosts["web1"].steps if s.state_id == "shoal-ledger"]
    assert '"xtables.table": [\n      "arp filter"\n    ]' in ledger_step.writes[0].content
    # A table that was there first is not shoal's.
    web1 = add_nft_tables(fresh_facts("web1"), [NftTable(family="arp", name="filter")])
    plan = plan_desired(desired, facts_for(desired, web1=web1))
    (ledger_step,) = [s for s in plan.hosts["web1"].steps if s.state_id == "shoal-ledger"]
    assert "xtables.table" not in ledger_step.writes[0].content


def _left_arptables(*, foreign_rule: bool) -> Plan:
    desired = cluster_desired("sysctl")
    ledger = Ledger(entries={"arptables.rule_present": (SHOAL_OUTPUT,),
                             "xtables.table": ("arp filter",)})  # fmt: skip
    web3 = add_arp_rules(fresh_facts("web3"), [arp_output_mangle(VIP_HTTP, RIP)]
                         + ([arp_input_drop("10.9.9.9")] if foreign_rule else []))  # fmt: skip
    web3 = add_nft_tables(web3, [NftTable(family="arp", name="filter")])
    return plan_desired(desired, facts_for(desired, web3=web3.model_copy(
        update={"ledger": Fact.of(ledger)})))  # fmt: skip


def test_an_empty_table_shoal_made_goes_after_its_last_rule() -> None:
    plan = _left_arptables(foreign_rule=False)
    cmds = commands(plan, "web3")
    assert cmds.index(("arptables", "-D", *SHOAL_OUTPUT.split())) < cmds.index(
        ("nft", "delete", "table", "arp", "filter"))  # fmt: skip
    (ledger_step,) = [s for s in plan.hosts["web3"].steps if s.state_id == "shoal-ledger"]
    assert "xtables.table" not in ledger_step.writes[0].content


def test_a_table_shoal_made_stays_while_someone_elses_rule_is_in_it() -> None:
    plan = _left_arptables(foreign_rule=True)
    assert ("nft", "delete", "table", "arp", "filter") not in commands(plan, "web3")
    (ledger_step,) = [s for s in plan.hosts["web3"].steps if s.state_id == "shoal-ledger"]
    assert "xtables.table" not in ledger_step.writes[0].content  # theirs now


def test_a_foreign_empty_table_stays() -> None:
    desired = cluster_desired("sysctl")
    ledger = Ledger(entries={"arptables.rule_present": (SHOAL_OUTPUT,)})
    web3 = add_arp_rules(fresh_facts("web3"), [arp_output_mangle(VIP_HTTP, RIP)])
    web3 = add_nft_tables(web3, [NftTable(family="arp", name="filter")])
    plan = plan_desired(desired, facts_for(desired, web3=web3.model_copy(
        update={"ledger": Fact.of(ledger)})))  # fmt: skip
    assert ("nft", "delete", "table", "arp", "filter") not in commands(plan, "web3")
    assert ("arptables", "-D", *SHOAL_OUTPUT.split()) in commands(plan, "web3")
