"""The planner end to end on typed facts: fresh, hand-configured, half-configured, foreign,
unknown and unreachable hosts, requisites, phases, and no table-wide flush ever."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.desired.models import Desired, ExtraState
from reconciler.errors import DesiredStateInvalid, RequisiteCycle
from reconciler.facts.hostfacts import Fact, HostFacts, Ledger, NftTable
from reconciler.plan.compile import compile_desired
from reconciler.plan.planner import LEDGER_PATH, plan_desired
from reconciler.plan.steps import Phase, Plan, Step
from tests.statecases import (
    HOSTS,
    REAL_SERVERS,
    VIP_DNS,
    VIP_HTTP,
    add_addresses,
    add_arp_rules,
    add_nat_rules,
    add_nft_tables,
    after_files,
    arp_input_drop,
    arp_output_mangle,
    cluster_desired,
    fresh_facts,
    hand_configured,
    redirect_rule,
    set_sysctls,
)
from tests.unit.plan.plan_support import facts_for

METHODS = ("sysctl", "arptables", "nft-arp", "redirect")
RUNTIME = ("sysctl", "addr", "arp", "nft", "iptables")


def runtime(plan: Plan, host: str) -> list[tuple[str, tuple[tuple[str, ...], ...]]]:
    return [(s.id, s.commands) for s in plan.hosts[host].steps if s.subsystem in RUNTIME]


def all_commands(plan: Plan) -> list[tuple[str, ...]]:
    return [argv for hp in plan.hosts.values() for s in hp.steps for argv in (*s.commands, *s.undo)]


# --- fresh hosts ----------------------------------------------------------------------------------

EXPECTED_FRESH: dict[str, list[tuple[str, tuple[tuple[str, ...], ...]]]] = {
    "sysctl": [
        ("web1/sysctl-net.ipv4.conf.all.arp_ignore/set",
         (("sysctl", "-w", "net.ipv4.conf.all.arp_ignore=1"),)),
        ("web1/sysctl-net.ipv4.conf.all.arp_announce/set",
         (("sysctl", "-w", "net.ipv4.conf.all.arp_announce=2"),)),
        ("web1/sysctl-net.ipv4.conf.eth0.arp_ignore/set",
         (("sysctl", "-w", "net.ipv4.conf.eth0.arp_ignore=1"),)),
        ("web1/sysctl-net.ipv4.conf.eth0.arp_announce/set",
         (("sysctl", "-w", "net.ipv4.conf.eth0.arp_announce=2"),)),
        ("web1/vip-10.77.0.100/add", (("ip", "addr", "add", "10.77.0.100/32", "dev", "lo"),)),
        ("web1/vip-10.77.0.101/add", (("ip", "addr", "add", "10.77.0.101/32", "dev", "lo"),)),
    ],
    "arptables": [
        ("web1/arptables-input-10.77.0.100/add",
         (("arptables", "-A", "INPUT", "-d", "10.77.0.100", "-j", "DROP"),)),
        ("web1/arptables-output-10.77.0.100/add",
         (("arptables", "-A", "OUTPUT", "-s", "10.77.0.100", "-j", "mangle",
           "--mangle-ip-s", "10.77.0.21"),)),
        ("web1/arptables-input-10.77.0.101/add",
         (("arptables", "-A", "INPUT", "-d", "10.77.0.101", "-j", "DROP"),)),
        ("web1/arptables-output-10.77.0.101/add",
         (("arptables", "-A", "OUTPUT", "-s", "10.77.0.101", "-j", "mangle",
           "--mangle-ip-s", "10.77.0.21"),)),
        ("web1/vip-10.77.0.100/add", (("ip", "addr", "add", "10.77.0.100/32", "dev", "eth0"),)),
        ("web1/vip-10.77.0.101/add", (("ip", "addr", "add", "10.77.0.101/32", "dev", "eth0"),)),
    ],
    "redirect": [
        ("web1/redirect-tcp-10.77.0.100-80/add",
         (("iptables", "-t", "nat", "-A", "PREROUTING", "-d", "10.77.0.100/32", "-p", "tcp",
           "-m", "tcp", "--dport", "80", "-j", "REDIRECT"),)),
        ("web1/redirect-udp-10.77.0.101-53/add",
         (("iptables", "-t", "nat", "-A", "PREROUTING", "-d", "10.77.0.101/32", "-p", "udp",
           "-m", "udp", "--dport", "53", "-j", "REDIRECT"),)),
    ],
}  # fmt: skip


@pytest.mark.parametrize("method", ["sysctl", "arptables", "redirect"])
def test_fresh_real_server_gets_exactly_the_corrected_commands(method: str) -> None:
    desired = cluster_desired(method)
    plan = plan_desired(desired, facts_for(desired))
    assert runtime(plan, "web1") == EXPECTED_FRESH[method]


def test_fresh_nft_arp_host_gets_one_atomic_table_then_the_vips() -> None:
    desired = cluster_desired("nft-arp")
    plan = plan_desired(desired, facts_for(desired))
    steps = runtime(plan, "web1")
    assert [s for s, _ in steps] == [
        "web1/nft-arp-shoal_arp/create", "web1/vip-10.77.0.100/add", "web1/vip-10.77.0.101/add"
    ]  # fmt: skip
    (argv,) = steps[0][1]
    assert argv[:3] == ("sh", "-c", 'printf "%s" "$1" | nft -f -')
    text = argv[4]
    assert text.startswith("table arp shoal_arp\ndelete table arp shoal_arp\ntable arp shoal_arp {")
    assert "arp operation request arp daddr ip @vips drop" in text
    assert "arp saddr ip @vips arp saddr ip set 10.77.0.21" in text
    assert "elements = { 10.77.0.100, 10.77.0.101 }" in text
    assert "flush" not in text


@pytest.mark.parametrize("method", METHODS)
def test_fresh_hosts_persist_everything_and_record_what_they_created(method: str) -> None:
    desired = cluster_desired(method)
    plan = plan_desired(desired, facts_for(desired))
    hp = plan.hosts["web2"]
    written = {w.path: w for s in hp.steps for w in s.writes}
    assert "/usr/local/sbin/shoal-restore" in written
    assert written["/usr/local/sbin/shoal-restore"].mode == "0755"
    assert "/etc/systemd/system/shoal-restore.service" in written
    assert ("/etc/sysctl.d/90-shoal-lvs-dr.conf" in written) == (method == "sysctl")
    commands = [c for s in hp.steps for c in s.commands]
    assert ("systemctl", "enable", "shoal-restore.service") in commands
    # The ledger is the host's last step, and lists every object the plan creates.
    assert hp.steps[-1].writes[0].path == LEDGER_PATH
    ledger = Ledger.model_validate_json(hp.steps[-1].writes[0].content)
    assert "file.managed" in ledger.entries and "service.enabled" in ledger.entries
    if method == "sysctl":
        assert ledger.sysctl_originals["net.ipv4.conf.all.arp_ignore"] == "0"
        assert ledger.entries["addr.present"] == ("10.77.0.100/32 dev lo",)
    script = written["/usr/local/sbin/shoal-restore"].content
    if method != "redirect":
        # ARP suppression before the VIP, at boot too.
        assert script.index("ip addr replace 10.77.0.100/32") > max(
            script.find("sysctl -q -w"), script.find("arp_rule INPUT"), script.find("nft -f -")
        )
    assert "flush" not in script and " -F" not in script


@pytest.mark.parametrize("method", METHODS)
def test_vip_requires_its_arp_suppression(method: str) -> None:
    desired = cluster_desired(method)
    plan = plan_desired(desired, facts_for(desired))
    steps = {s.id: s for s in plan.hosts["web1"].steps}
    for sid, step in steps.items():
        if "/vip-" in sid:
            assert any(steps[r].subsystem in ("sysctl", "arp", "nft") for r in step.require)
    assert not any("/vip-" in s for s in steps) or method != "redirect"


# --- hand-configured, converged, half-configured --------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_hand_configured_hosts_need_no_runtime_step_and_adopt_nothing(method: str) -> None:
    desired = cluster_desired(method)
    overrides = {h: hand_configured(method, h, [VIP_HTTP, VIP_DNS] if h == "web1" else [VIP_HTTP])
                 for h in REAL_SERVERS}  # fmt: skip
    plan = plan_desired(desired, facts_for(desired, **overrides))
    for host in REAL_SERVERS:
        assert runtime(plan, host) == []
        ledger = Ledger.model_validate_json(plan.hosts[host].steps[-1].writes[0].content)
        # Only what shoal created (the persistence files) is recorded; the rest stays the admin's.
        assert set(ledger.entries) == {"file.managed", "service.enabled"}
        assert ledger.sysctl_originals == {}


@pytest.mark.parametrize("method", METHODS)
def test_after_apply_the_plan_is_empty(method: str) -> None:
    desired = cluster_desired(method)
    overrides = {h: hand_configured(method, h, [VIP_HTTP, VIP_DNS] if h == "web1" else [VIP_HTTP])
                 for h in REAL_SERVERS}  # fmt: skip
    facts = facts_for(desired, **overrides)
    first = plan_desired(desired, facts)
    second = plan_desired(desired, after_files(facts, first))
    for host in REAL_SERVERS:
        assert second.hosts[host].steps == ()
        assert second.hosts[host].skipped == ()
    assert second.id != first.id


def test_half_configured_sysctl_host_gets_only_the_missing_steps() -> None:
    desired = cluster_desired("sysctl")
    web1 = set_sysctls(fresh_facts("web1"), {"net.ipv4.conf.all.arp_ignore": "1"})
    web1 = add_addresses(web1, [("lo", VIP_HTTP, 32)])
    plan = plan_desired(desired, facts_for(desired, web1=web1))
    assert [s for s, _ in runtime(plan, "web1")] == [
        "web1/sysctl-net.ipv4.conf.all.arp_announce/set",
        "web1/sysctl-net.ipv4.conf.eth0.arp_ignore/set",
        "web1/sysctl-net.ipv4.conf.eth0.arp_announce/set",
        "web1/vip-10.77.0.101/add",
    ]


def test_half_configured_arptables_host_gets_only_the_missing_rule() -> None:
    desired = cluster_desired("arptables", real_servers=("web2",))
    web2 = add_arp_rules(fresh_facts("web2"), [arp_input_drop(VIP_HTTP), arp_input_drop(VIP_DNS),
                                               arp_output_mangle(VIP_DNS, HOSTS["web2"])])
    web2 = add_addresses(web2, [("eth0", VIP_DNS, 32)])
    plan = plan_desired(desired, facts_for(desired, web2=web2))
    assert runtime(plan, "web2") == [
        ("web2/arptables-output-10.77.0.100/add",
         (("arptables", "-A", "OUTPUT", "-s", "10.77.0.100", "-j", "mangle",
           "--mangle-ip-s", "10.77.0.22"),)),
        ("web2/vip-10.77.0.100/add", (("ip", "addr", "add", "10.77.0.100/32", "dev", "eth0"),)),
    ]  # fmt: skip


def test_the_howto_d_form_of_the_output_rule_is_not_ours() -> None:
    """`-A OUTPUT -d VIP -j mangle` leaks the VIP; it does not count as the rule we want."""
    desired = cluster_desired("arptables", real_servers=("web2",))
    howto = arp_output_mangle(VIP_HTTP, HOSTS["web2"]).model_copy(
        update={"source_ip": None, "destination_ip": VIP_HTTP}
    )
    web2 = add_arp_rules(fresh_facts("web2"), [howto])
    plan = plan_desired(desired, facts_for(desired, web2=web2))
    assert "web2/arptables-output-10.77.0.100/add" in [s for s, _ in runtime(plan, "web2")]


def test_stale_nft_table_is_replaced_atomically_with_undo() -> None:
    desired = cluster_desired("nft-arp", real_servers=("web3",))
    old = hand_configured("nft-arp", "web3", [VIP_HTTP])  # lacks VIP_DNS
    old = add_addresses(old, [("eth0", VIP_DNS, 32)])
    plan = plan_desired(desired, facts_for(desired, web3=old))
    (step,) = [s for s in plan.hosts["web3"].steps if s.subsystem == "nft"]
    assert step.id == "web3/nft-arp-shoal_arp/replace"
    assert step.commands[0][:2] == ("sh", "-c") and "nft list table" in step.commands[0][2]
    assert step.undo[0][2].startswith("set -e; { printf \"table %s %s\\ndelete table")


# --- ownership ------------------------------------------------------------------------------------


def without_address(facts: HostFacts, dev: str, address: str) -> HostFacts:
    ifaces = tuple(
        i.model_copy(update={"addresses": tuple(a for a in i.addresses if a.address != address)})
        if i.name == dev else i
        for i in facts.interfaces.value or ()
    )  # fmt: skip
    return facts.model_copy(update={"interfaces": Fact.of(ifaces)})


def foreign(host: str) -> HostFacts:
    f = fresh_facts(host)
    f = add_addresses(f, [("lo", "10.9.9.10", 32), ("eth0", VIP_HTTP, 24)])
    f = add_arp_rules(f, [arp_input_drop("10.9.9.9"), arp_input_drop(VIP_HTTP)])
    f = add_nat_rules(f, [redirect_rule("10.9.9.11", "tcp", 81)])
    other = NftTable(family="inet", name="filter", canonical_json="")
    arp_other = NftTable(family="arp", name="shoal_arp_foreign", canonical_json="")
    return add_nft_tables(set_sysctls(f, {"net.ipv4.conf.all.arp_ignore": "1"}), [other, arp_other])


@pytest.mark.parametrize("method", METHODS)
def test_foreign_objects_are_never_removed(method: str) -> None:
    desired = cluster_desired(method, real_servers=("web1",))
    web2 = foreign("web2").model_copy(update={"ledger": Fact.of(Ledger())})
    plan = plan_desired(desired, facts_for(desired, web2=web2))
    assert "web2" not in plan.hosts  # nothing of shoal's there: nothing to do
    commands = [argv for hp in plan.hosts.values() for s in hp.steps for argv in s.commands]
    assert not [a for a in commands if a[:3] == ("ip", "addr", "del") or "-D" in a]


def test_only_what_the_ledger_lists_is_removed_in_reverse_order() -> None:
    desired = cluster_desired("arptables", real_servers=("web1",))
    ledger = Ledger(
        entries={
            "addr.present": ("10.77.0.100/32 dev eth0",),
            "arptables.rule_present": ("INPUT -d 10.77.0.100 -j DROP",),
        }
    )
    # Without the foreign VIP on eth0: with it, the suppression stays (test_invariants.py).
    web2 = without_address(foreign("web2"), "eth0", VIP_HTTP)
    web2 = add_addresses(web2, [("eth0", VIP_HTTP, 32)])
    plan = plan_desired(desired, facts_for(desired, web2=web2.model_copy(
        update={"ledger": Fact.of(ledger)})))  # fmt: skip
    steps = plan.hosts["web2"].steps
    assert [(s.id, s.commands) for s in steps if s.subsystem in RUNTIME] == [
        ("web2/remove-addr-10.77.0.100_32_dev_eth0/delete",
         (("ip", "addr", "del", "10.77.0.100/32", "dev", "eth0"),)),
        ("web2/remove-arptables-INPUT_-d_10.77.0.100_-j_DROP/delete",
         (("arptables", "-D", "INPUT", "-d", "10.77.0.100", "-j", "DROP"),)),
    ]  # fmt: skip
    assert all(s.phase == Phase.REAL_SERVERS_CLEANUP for s in steps)
    # Nothing of shoal's is left on web2: its ledger goes instead of being written empty.
    assert steps[-1].id == "web2/shoal-leftovers/remove"
    assert steps[-1].commands == (("rm", "-f", LEDGER_PATH),)


def test_sysctl_removal_restores_the_recorded_original() -> None:
    desired = cluster_desired("sysctl", real_servers=("web1",))
    ledger = Ledger(entries={"sysctl.present": ("net.ipv4.conf.all.arp_ignore",)},
                    sysctl_originals={"net.ipv4.conf.all.arp_ignore": "2"})  # fmt: skip
    web3 = set_sysctls(fresh_facts("web3"), {"net.ipv4.conf.all.arp_ignore": "1"})
    plan = plan_desired(desired, facts_for(desired, web3=web3.model_copy(
        update={"ledger": Fact.of(ledger)})))  # fmt: skip
    (step, cleanup) = plan.hosts["web3"].steps
    assert step.commands == (("sysctl", "-w", "net.ipv4.conf.all.arp_ignore=2"),)
    assert step.undo == (("sysctl", "-w", "net.ipv4.conf.all.arp_ignore=1"),)
    # The ledger is empty now and web3 is in no cluster: the file goes (reconciler.plan.leftovers).
    assert cleanup.commands == (("rm", "-f", LEDGER_PATH),)


def test_an_earlier_original_survives_a_second_change() -> None:
    desired = cluster_desired("sysctl", real_servers=("web1",))
    ledger = Ledger(entries={"sysctl.present": ("net.ipv4.conf.all.arp_ignore",)},
                    sysctl_originals={"net.ipv4.conf.all.arp_ignore": "0"})  # fmt: skip
    web1 = set_sysctls(fresh_facts("web1"), {"net.ipv4.conf.all.arp_ignore": "8"})
    plan = plan_desired(desired, facts_for(desired, web1=web1.model_copy(
        update={"ledger": Fact.of(ledger)})))  # fmt: skip
    written = Ledger.model_validate_json(plan.hosts["web1"].steps[-1].writes[0].content)
    assert written.sysctl_originals["net.ipv4.conf.all.arp_ignore"] == "0"
    assert written.sysctl_originals["net.ipv4.conf.all.arp_announce"] == "0"


# --- unknown facts, unreachable hosts -------------------------------------------------------------


def test_unknown_ledger_means_no_removal_and_says_why() -> None:
    desired = cluster_desired("sysctl", real_servers=("web1",))
    web2 = foreign("web2").model_copy(update={"ledger": Fact[Ledger].unknown("bad json")})
    web1 = fresh_facts("web1").model_copy(update={"ledger": Fact[Ledger].unknown("bad json")})
    plan = plan_desired(desired, facts_for(desired, web1=web1, web2=web2))
    hp = plan.hosts["web1"]
    assert not any(s.state_id.startswith("remove-") for s in hp.steps)
    assert not any(w.path == LEDGER_PATH for s in hp.steps for w in s.writes)
    assert [s.state_id for s in hp.skipped] == ["shoal-ledger"]
    assert "bad json" in hp.skipped[0].reason
    assert "web2" not in plan.hosts


def test_unknown_interfaces_block_an_address_removal_with_the_reason() -> None:
    desired = cluster_desired("sysctl", real_servers=("web1",))
    ledger = Ledger(entries={"addr.present": ("10.77.0.100/32 dev lo",)})
    web2 = fresh_facts("web2").model_copy(update={
        "ledger": Fact.of(ledger), "interfaces": Fact[Any].unknown("ip -j addr exited 1")})
    plan = plan_desired(desired, facts_for(desired, web2=web2))
    hp = plan.hosts["web2"]
    assert hp.steps == ()  # the entry stays in the ledger: no ledger write either
    assert len(hp.skipped) == 1 and "ip -j addr exited 1" in hp.skipped[0].reason


def test_unreachable_host_is_marked_and_gets_no_steps() -> None:
    desired = cluster_desired("sysctl")
    facts = facts_for(desired)
    facts["web3"] = HostFacts.all_unknown("web3", "host unreachable: connect timed out")
    plan = plan_desired(desired, facts)
    hp = plan.hosts["web3"]
    assert (hp.reachable, hp.steps) == (False, ())
    assert hp.unknown_reason == "host unreachable: connect timed out"
    assert plan.hosts["web1"].steps


# --- requisites, phases, ids ----------------------------------------------------------------------


def _extra(sid: str, function: str, args: dict[str, Any], **req: tuple[str, ...]) -> ExtraState:
    return ExtraState(id=sid, function=function, hosts=("web1",), args=args, **req)  # type: ignore[arg-type]


def test_requisite_cycle_is_named() -> None:
    extras = [
        _extra("a", "sysctl.present", {"key": "net.ipv4.ip_forward", "value": 0}, require=("b",)),
        _extra("b", "sysctl.present", {"key": "net.ipv4.conf.lo.rp_filter", "value": 0},
               require=("a",)),
    ]  # fmt: skip
    desired = cluster_desired("sysctl", extras=extras)
    with pytest.raises(RequisiteCycle) as err:
        plan_desired(desired, facts_for(desired))
    assert err.value.host == "web1"
    assert set(err.value.cycle) == {"a", "b"}
    assert "a" in str(err.value) and "->" in str(err.value)


def test_unknown_requisite_and_bad_args_are_invalid_desired_state() -> None:
    desired = cluster_desired("sysctl", extras=[
        _extra("x", "service.running", {"name": "nginx"}, require=("nope",))])  # fmt: skip
    with pytest.raises(DesiredStateInvalid, match="'nope' names no state"):
        compile_desired(desired)
    table = _extra("t", "nft.table_present", {"family": "inet", "name": "filter"})
    bad = cluster_desired("sysctl", extras=[table])
    with pytest.raises(DesiredStateInvalid, match="shoal only manages tables named shoal_"):
        plan_desired(bad, facts_for(bad))


def _web1_with(files: dict[str, str], services: dict[str, bool], desired: Desired) -> HostFacts:
    from tests.statecases import with_files

    f = with_files(fresh_facts("web1"), {p: (c, "0644") for p, c in files.items()})
    return f.model_copy(update={"services": Fact.of(services)})


def test_watch_adds_a_restart_only_when_the_watched_state_changes() -> None:
    conf = _extra("conf", "file.managed", {"path": "/etc/app.conf", "content": "x=1\n"})
    svc = _extra("app", "service.running", {"name": "app", "reload": True}, watch=("conf",))
    desired = cluster_desired("sysctl", extras=[conf, svc])
    changed = plan_desired(desired, facts_for(desired, web1=_web1_with({}, {"app": True}, desired)))
    steps = {s.id: s for s in changed.hosts["web1"].steps}
    assert steps["web1/app/reload"].commands == (("systemctl", "reload", "app"),)
    assert steps["web1/app/reload"].require == ("web1/conf/write",)
    assert steps["web1/app/reload"].phase == Phase.EXTRA
    same = plan_desired(desired, facts_for(desired, web1=_web1_with(
        {"/etc/app.conf": "x=1\n"}, {"app": True}, desired)))  # fmt: skip
    assert not any(s.state_id in ("conf", "app") for s in same.hosts["web1"].steps)


def test_onchanges_includes_the_state_only_when_a_target_changed() -> None:
    conf = _extra("conf", "file.managed", {"path": "/etc/app.conf", "content": "x=1\n"})
    start = _extra("app", "service.running", {"name": "app"}, onchanges=("conf",))
    desired = cluster_desired("sysctl", extras=[conf, start])
    stopped_same = _web1_with({"/etc/app.conf": "x=1\n"}, {"app": False}, desired)
    assert not any(s.state_id == "app" for s in plan_desired(
        desired, facts_for(desired, web1=stopped_same)).hosts["web1"].steps)  # fmt: skip
    stopped_changed = _web1_with({}, {"app": False}, desired)
    plan = plan_desired(desired, facts_for(desired, web1=stopped_changed))
    assert "web1/app/start" in [s.id for s in plan.hosts["web1"].steps]


def test_phases_real_servers_before_directors_backup_before_primary() -> None:
    desired = cluster_desired("sysctl", director="ipvsadm")
    facts = facts_for(desired)
    plan = plan_desired(desired, facts)
    rs_phases = {s.phase for h in REAL_SERVERS for s in plan.hosts[h].steps}
    assert rs_phases == {Phase.PACKAGES, Phase.REAL_SERVERS_PREPARE} or rs_phases == {
        Phase.REAL_SERVERS_PREPARE
    }
    lvs1 = {s.phase for s in plan.hosts["lvs1"].steps if s.subsystem != "pkg"}
    lvs2 = {s.phase for s in plan.hosts["lvs2"].steps if s.subsystem != "pkg"}
    assert lvs2 and max(lvs2) <= Phase.DIRECTOR_BACKUP
    assert lvs1 and min(lvs1) >= Phase.DIRECTOR_PRIMARY


def test_plan_id_is_stable_and_hashes_facts() -> None:
    desired = cluster_desired("arptables")
    facts = facts_for(desired)
    assert plan_desired(desired, facts).id == plan_desired(desired, facts).id
    other = dict(facts, web3=set_sysctls(facts["web3"], {"net.ipv4.ip_forward": "1"}))
    assert plan_desired(desired, other).id != plan_desired(desired, facts).id


def test_missing_tool_is_installed_first() -> None:
    desired = cluster_desired("arptables", real_servers=("web1",))
    web1 = fresh_facts("web1")
    web1 = web1.model_copy(update={
        "tools": Fact.of({**(web1.tools.value or {}), "arptables": False}),
        "arptables": Fact[Any].unknown("arptables is not installed"),
    })  # fmt: skip
    plan = plan_desired(desired, facts_for(desired, web1=web1))
    first = plan.hosts["web1"].steps[0]
    assert first.commands == (("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install",
                               "-y", "--no-install-recommends", "arptables"),)  # fmt: skip
    assert first.phase == Phase.PACKAGES
    assert "web1/arptables-input-10.77.0.100/add" in [s.id for s in plan.hosts["web1"].steps]


# --- never a table-wide flush ---------------------------------------------------------------------

FLUSHES = (
    ("ipvsadm", "-C"), ("iptables", "-F"), ("arptables", "-F"), ("iptables", "-X"),
    ("arptables", "-X"), ("nft", "flush"),
)  # fmt: skip


def _is_flush(argv: tuple[str, ...]) -> bool:
    text = " ".join(argv)
    if "flush ruleset" in text or "ipvsadm -C" in text or "ipvsadm --clear" in text:
        return True
    if argv and argv[0] in ("iptables", "arptables", "ip6tables"):
        return any(a in ("-F", "--flush", "-X", "--delete-chain") for a in argv)
    if argv[:3] == ("nft", "delete", "table"):
        return not argv[4].startswith("shoal_")
    return "delete table" in text and "shoal_" not in text


ledger_keys = st.fixed_dictionaries({
    "addr.present": st.lists(st.sampled_from(
        ["10.77.0.150/32 dev lo", "10.77.0.151/32 dev eth0", "bogus key"]), max_size=2),
    "arptables.rule_present": st.lists(st.sampled_from(
        ["INPUT -d 10.77.0.150 -j DROP", "INPUT -j DROP", "FORWARD -F"]), max_size=2),
    "nft.table_present": st.lists(st.sampled_from(
        ["arp shoal_arp", "inet filter", "arp shoal_old", "ip nat"]), max_size=2),
    "iptables.rule_present": st.lists(st.sampled_from(
        ["nat PREROUTING -d 10.77.0.150/32 -p tcp -m tcp --dport 8 -j REDIRECT",
         "nat PREROUTING -F"]), max_size=2),
    "sysctl.present": st.lists(st.sampled_from(["net.ipv4.conf.all.arp_ignore"]), max_size=1),
})  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(METHODS),
    director=st.sampled_from(["keepalived", "ipvsadm", "nftables"]),
    members=st.lists(st.sampled_from(REAL_SERVERS), unique=True, max_size=3),
    entries=ledger_keys,
    tables=st.lists(st.sampled_from(["filter", "nat", "shoal_arp", "shoal_old"]), unique=True),
)
def test_no_plan_ever_flushes_a_table(
    method: str, director: str, members: list[str], entries: dict[str, list[str]],
    tables: list[str],
) -> None:  # fmt: skip
    desired = cluster_desired(method, director=director, real_servers=tuple(members))
    ledger = Ledger(entries={k: tuple(v) for k, v in entries.items()},
                    sysctl_originals={"net.ipv4.conf.all.arp_ignore": "0"})  # fmt: skip
    overrides = {}
    for host in HOSTS:
        f = add_nft_tables(fresh_facts(host), [
            NftTable(family="arp" if t.startswith("shoal") else "inet", name=t,
                     canonical_json="[]") for t in tables])  # fmt: skip
        overrides[host] = f.model_copy(update={"ledger": Fact.of(ledger)})
    plan = plan_desired(desired, facts_for(desired, **overrides))
    for argv in all_commands(plan):
        assert not _is_flush(argv), argv
    for hp in plan.hosts.values():
        for step in hp.steps:
            _check_step(step)


def _check_step(step: Step) -> None:
    assert step.id.startswith(f"{step.host}/{step.state_id}/")
    for argv in step.commands:
        assert all(isinstance(a, str) for a in argv)
        if argv[:2] == ("sh", "-c"):
            # Values reach a shell only as positional parameters, never inside the script text.
            assert "10.77." not in argv[2]
