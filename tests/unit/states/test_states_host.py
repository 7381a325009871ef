"""The generic host state functions one by one: in-sync checks against canonical facts,
present and absent forms, refusals, ledger keys and the watch reaction."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.desired.models import Desired
from reconciler.errors import DesiredStateInvalid
from reconciler.facts.hostfacts import ArpRule, Fact, HostFacts, Ledger, NftTable
from reconciler.plan.steps import LowState
from states import arptables, file, iptables, nft, sysctl
from states.base import PlanContext, StateResult
from states.registry import kind_of
from tests.statecases import (
    add_arp_rules,
    add_nat_rules,
    add_nft_tables,
    arp_input_drop,
    cluster_desired,
    fresh_facts,
    redirect_rule,
    set_sysctls,
    shoal_arp_table_json,
    with_files,
)

DESIRED: Desired = cluster_desired("sysctl")


def run(function: str, args: dict[str, Any], facts: HostFacts) -> StateResult:
    low = LowState(id="t", function=function, host=facts.host, args=args)
    return kind_of(function).run(low, PlanContext(desired=DESIRED, facts={facts.host: facts}))


# --- sysctl ---------------------------------------------------------------------------------------


def test_sysctl_in_sync_and_vlan_key_spelling() -> None:
    f = set_sysctls(fresh_facts("web1"), {"net.ipv4.conf.eth0.100.arp_ignore": "1"})
    assert run("sysctl.present", {"key": "net.ipv4.conf.eth0/100.arp_ignore", "value": 1}, f) == (
        StateResult()
    )
    res = run("sysctl.present", {"key": "net.ipv4.conf.eth0/100.arp_ignore", "value": "2"}, f)
    assert res.steps[0].commands == (("sysctl", "-w", "net.ipv4.conf.eth0/100.arp_ignore=2"),)
    assert res.claims[0].original == "1"


def test_sysctl_unknown_fact_or_missing_original_skips() -> None:
    f = fresh_facts("web1").model_copy(update={"sysctls": Fact[Any].unknown("no /proc")})
    res = run("sysctl.present", {"key": "net.ipv4.conf.all.arp_ignore", "value": "1"}, f)
    assert res.steps == () and "no /proc" in res.skipped[0].reason
    res = run("sysctl.absent", {"key": "net.ipv4.conf.all.arp_ignore"}, fresh_facts("web1"))
    assert res.steps == () and "no original" in res.skipped[0].reason


def test_sysctl_refuses_values_that_are_not_numbers() -> None:
    with pytest.raises(DesiredStateInvalid):
        run("sysctl.present", {"key": "net.ipv4.ip_forward", "value": "1; reboot"},
            fresh_facts("web1"))  # fmt: skip


# --- addr -----------------------------------------------------------------------------------------


def test_addr_missing_interface_is_a_reason_not_a_step() -> None:
    res = run("addr.present", {"address": "10.77.0.100", "interface": "eth9"}, fresh_facts("web1"))
    assert res.steps == () and "eth9 does not exist" in res.skipped[0].reason


def test_addr_absent_refuses_keys_it_did_not_write() -> None:
    res = run("addr.absent", {"key": "10.77.0.21/24 dev eth0; rm -rf /"}, fresh_facts("web1"))
    assert res.steps == () and "not a key shoal writes" in res.skipped[0].reason


# --- arptables ------------------------------------------------------------------------------------


def test_arptables_rule_with_extra_matches_is_not_ours() -> None:
    narrower = arp_input_drop("10.77.0.100").model_copy(update={"interface_in": "eth0"})
    f = add_arp_rules(fresh_facts("web1"), [narrower])
    res = run("arptables.rule_present",
              {"chain": "INPUT", "destination": "10.77.0.100", "target": "DROP"}, f)  # fmt: skip
    assert [s.commands for s in res.steps] == [
        (("arptables", "-A", "INPUT", "-d", "10.77.0.100", "-j", "DROP"),)
    ]


def test_arptables_absent_deletes_only_shoals_copy_and_undo_puts_it_back() -> None:
    # shoal appends a rule only when no copy is there: the second copy is an operator's.
    f = add_arp_rules(fresh_facts("web1"), [arp_input_drop("10.77.0.100")] * 2)
    res = run("arptables.rule_absent", {"key": "INPUT -d 10.77.0.100 -j DROP"}, f)
    (step,) = res.steps
    assert step.commands == (("arptables", "-D", "INPUT", "-d", "10.77.0.100", "-j", "DROP"),)
    assert step.undo == (("arptables", "-A", "INPUT", "-d", "10.77.0.100", "-j", "DROP"),)
    assert "1 identical copy(ies) not shoal's stay" in step.description


def test_arptables_refuses_the_mangle_target_on_input() -> None:
    with pytest.raises(DesiredStateInvalid, match="OUTPUT"):
        run("arptables.rule_present", {"chain": "INPUT", "source": "10.77.0.100",
            "target": "mangle", "mangle_ip_s": "10.77.0.21"}, fresh_facts("web1"))  # fmt: skip


def test_arptables_legacy_style_addresses_compare_equal() -> None:
    legacy = ArpRule(chain="INPUT", target="DROP", destination_ip="10.77.0.100/32",
                     source_ip="0.0.0.0/0")  # fmt: skip
    assert arptables.matches(
        legacy, arptables.ArpRuleArgs(chain="INPUT", destination="10.77.0.100", target="DROP")
    )


# --- iptables -------------------------------------------------------------------------------------


def test_iptables_compares_the_canonical_save_form() -> None:
    f = add_nat_rules(fresh_facts("web1"), [redirect_rule("10.77.0.100", "tcp", 80)])
    args = {"destination": "10.77.0.100", "protocol": "tcp", "dport": 80}
    assert run("iptables.rule_present", args, f) == StateResult()
    assert run("iptables.rule_present", {**args, "dport": 443}, f).steps


def test_iptables_absent_key_round_trips_and_odd_keys_are_refused() -> None:
    f = add_nat_rules(fresh_facts("web1"), [redirect_rule("10.77.0.100", "udp", 53)])
    key = "nat PREROUTING -d 10.77.0.100/32 -p udp -m udp --dport 53 -j REDIRECT"
    (step,) = run("iptables.rule_absent", {"key": key}, f).steps
    assert step.commands == (
        ("iptables", "-t", "nat", "-D", "PREROUTING", "-d", "10.77.0.100/32",
         "-p", "udp", "-m", "udp", "--dport", "53", "-j", "REDIRECT"),
    )  # fmt: skip
    odd = run("iptables.rule_absent", {"key": "nat PREROUTING -F"}, f)
    assert odd.steps == () and odd.skipped


# --- nft ------------------------------------------------------------------------------------------


def _arp_table(vips: list[str], comment: str | None = None) -> tuple[dict[str, Any], NftTable]:
    args = nft.arp_table_args(vips, "10.77.0.21")
    digest = "shoal:" + nft.digest(nft.NftTableArgs.model_validate(args))
    table = NftTable(family="arp", name="shoal_arp", comment=comment or digest,
                     canonical_json=shoal_arp_table_json(vips, "10.77.0.21", digest))  # fmt: skip
    return args, table


def test_nft_table_in_sync_when_json_matches_the_definition() -> None:
    args, table = _arp_table(["10.77.0.100"])
    assert run("nft.table_present", args, add_nft_tables(fresh_facts("web1"), [table])) == (
        StateResult()
    )


def test_nft_table_drift_is_seen_in_elements_rules_and_comment() -> None:
    args, table = _arp_table(["10.77.0.100"])
    _, more = _arp_table(["10.77.0.100", "10.77.0.9"])
    stale = more.model_copy(update={"comment": table.comment})  # an element added by hand
    other_comment = table.model_copy(update={"comment": "shoal:0000"})
    for t in (stale, other_comment):
        res = run("nft.table_present", args, add_nft_tables(fresh_facts("web1"), [t]))
        assert [s.id.rsplit("/", 1)[1] for s in res.steps] == ["replace"]


@pytest.mark.parametrize(
    "rule",
    ["drop }\ntable inet x {", "drop; flush ruleset", 'drop comment "x"', "drop }", "# x", ""],
)
def test_nft_rules_cannot_escape_their_chain(rule: str) -> None:
    args = nft.arp_table_args(["10.77.0.100"], "10.77.0.21")
    args["chains"][0]["rules"] = [rule]
    with pytest.raises(DesiredStateInvalid):
        run("nft.table_present", args, fresh_facts("web1"))


def test_nft_absent_only_deletes_shoal_tables_it_finds() -> None:
    _, table = _arp_table(["10.77.0.100"])
    foreign = NftTable(family="inet", name="filter")
    f = add_nft_tables(fresh_facts("web1"), [table, foreign])
    assert run("nft.table_absent", {"key": "inet filter"}, f).skipped
    (step,) = run("nft.table_absent", {"key": "arp shoal_arp"}, f).steps
    assert step.commands[0][5:7] == ("arp", "shoal_arp")
    assert 'nft delete table "$2" "$3"' in step.commands[0][2]
    gone = run("nft.table_absent", {"key": "arp shoal_gone"}, f)
    assert gone.steps == () and gone.releases


# --- file -----------------------------------------------------------------------------------------


def test_file_mode_only_change_is_a_chmod() -> None:
    f = with_files(fresh_facts("web1"), {"/etc/x.conf": ("a\n", "0600")})
    (step,) = run("file.managed", {"path": "/etc/x.conf", "content": "a\n", "mode": "644"}, f).steps
    assert step.commands == (("chmod", "0644", "/etc/x.conf"),)
    assert step.undo == (("chmod", "0600", "/etc/x.conf"),)


def test_file_existing_is_not_claimed_new_is_and_undo_differs() -> None:
    f = with_files(fresh_facts("web1"), {"/etc/x.conf": ("old\n", "0644"), "/etc/y.conf": None})
    old = run("file.managed", {"path": "/etc/x.conf", "content": "new\n"}, f)
    new = run("file.managed", {"path": "/etc/y.conf", "content": "new\n"}, f)
    assert old.claims == () and old.steps[0].undo == ()  # the executor's snapshot restores it
    assert [c.key for c in new.claims] == ["/etc/y.conf"]
    assert new.steps[0].undo == (("rm", "-f", "/etc/y.conf"),)
    assert file.sha256("new\n") != file.sha256("old\n")


def test_file_path_must_be_absolute_and_normal() -> None:
    for path in ("etc/x", "/etc/../x", "/etc/x y", "/etc/x\n"):
        with pytest.raises(DesiredStateInvalid):
            run("file.managed", {"path": path, "content": ""}, fresh_facts("web1"))


def test_ledger_keys_name_what_the_state_manages() -> None:
    low = LowState(id="t", function="sysctl.present", host="web1",
                   args={"key": "net.ipv4.conf.all.arp_ignore", "value": "1"})  # fmt: skip
    assert kind_of("sysctl.present").ledger_key(low) == "net.ipv4.conf.all.arp_ignore"
    low = LowState(id="t", function="iptables.rule_present", host="web1",
                   args={"destination": "10.77.0.100", "protocol": "tcp", "dport": 80})  # fmt: skip
    assert iptables.key_of(iptables.RedirectArgs.model_validate(low.args)) == kind_of(
        "iptables.rule_present"
    ).ledger_key(low)
    assert sysctl.normalize("4096\t87380  6291456") == "4096 87380 6291456"
    assert Ledger().entries == {}


@pytest.mark.parametrize(
    ("services", "reload", "again"),
    [
        ({"app.service": True}, False, ("systemctl", "restart", "app")),
        ({"app": True}, True, ("systemctl", "reload-or-restart", "app")),
        ({"app": False}, False, None),  # running's start step is undone by a stop
        (None, False, ("systemctl", "try-restart", "app")),
        (None, True, ("systemctl", "try-reload-or-restart", "app")),
    ],
)
def test_watch_restart_runs_again_after_a_rollback(
    services: dict[str, bool] | None, reload: bool, again: tuple[str, ...] | None
) -> None:
    """After the rollback restored the watched file, the unit must pick the old file up."""
    facts = fresh_facts("web1")
    facts = facts.model_copy(
        update={"services": Fact.of(services) if services is not None else Fact.unknown("no")}
    )
    low = LowState(id="t", function="service.running", host="web1",
                   args={"name": "app", "reload": reload})  # fmt: skip
    watched = kind_of("service.running").run_watch(
        low, PlanContext(desired=DESIRED, facts={"web1": facts})
    )
    assert watched is not None
    (step,) = watched.steps
    assert step.commands == (("systemctl", "reload" if reload else "restart", "app"),)
    assert step.after_rollback == ((again,) if again else ())
