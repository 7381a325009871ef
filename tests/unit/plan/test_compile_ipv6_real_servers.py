"""The real servers of a dual-stack cluster (an IPv4 and an IPv6 service, same real servers) for
every ARP method: the IPv6 VIP is a /128 on `lo` added `nodad` with no IPv4 sysctl or ARP rule
as a requisite (sysctl, arptables, nft-arp), or an ip6tables REDIRECT (redirect); the IPv4
states are exactly the IPv4-only cluster's; the boot restore script brings both back; a phase
snapshots `ip6tables-save`; an IPv6 VIP on a real server's eth0 is a safety violation."""

from __future__ import annotations

import pytest

from reconciler.apply.snapshot_targets import snapshot_targets
from reconciler.desired.models import Desired, Host, Inventory, Service
from reconciler.facts.hostfacts import Fact, HostFacts, IptablesNat, IptablesRule
from reconciler.plan.compile import compile_real_servers, managed_paths
from reconciler.plan.invariants import check_host
from reconciler.plan.persistence import RESTORE_SCRIPT
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import LowState, Plan
from states import iptables
from tests.statecases import HOSTS, add_addresses, all_fresh, cluster_desired, gathered

VIP6 = "fd77:77:77::100"
METHODS = ("sysctl", "arptables", "nft-arp", "redirect")


def address6(host: str) -> str:
    return f"fd77:77:77::{HOSTS[host].rsplit('.', 1)[1]}"


def dual_stack(method: str, *, ipv6_only: bool = False) -> Desired:
    """cluster_desired's cluster plus http6 on VIP6 (the same real servers as http)."""
    d = cluster_desired(method, director="ipvsadm")
    hosts = {
        n: Host(name=n, address=address6(n), interface="eth0")
        if ipv6_only
        else h.model_copy(update={"address6": address6(n)})
        for n, h in d.inventory.hosts.items()
    }
    web = d.clusters["web"]
    http6 = Service(name="http6", vip=VIP6, port=80, protocol="tcp",
                    real_servers=web.services[0].real_servers)  # fmt: skip
    services = (http6,) if ipv6_only else (*web.services, http6)
    web = web.model_copy(update={"services": services})
    return d.model_copy(update={"inventory": Inventory(hosts=hosts), "clusters": {"web": web}})


def facts_v6(desired: Desired) -> dict[str, HostFacts]:
    """Fresh hosts whose ip6tables nat table reads empty (the facts of a lab host)."""
    empty = Fact.of(IptablesNat(backend="nft"))
    paths = managed_paths(desired)
    return {
        h: gathered(f, paths.get(h, [])).model_copy(update={"ip6tables_nat": empty})
        for h, f in all_fresh().items()
    }


def on(lows: list[LowState], host: str) -> dict[str, LowState]:
    return {low.id: low for low in lows if low.host == host}


@pytest.mark.parametrize("method", ["sysctl", "arptables", "nft-arp"])
def test_the_ipv6_vip_is_a_128_on_lo_that_requires_no_arp_suppression(method: str) -> None:
    web2 = on(compile_real_servers(dual_stack(method)), "web2")
    vip6 = web2[f"vip-{VIP6}"]
    assert (vip6.function, vip6.args) == (
        "addr.present",
        {"address": VIP6, "prefix": 128, "interface": "lo"},
    )
    assert vip6.require == ("pkg-lvs-dr",)
    # The IPv4 states are the IPv4-only cluster's, byte for byte.
    ipv4_only = on(compile_real_servers(cluster_desired(method, director="ipvsadm")), "web2")
    assert {k: v for k, v in web2.items() if k != f"vip-{VIP6}"} == ipv4_only
    # Nothing of the ARP suppression names the IPv6 VIP.
    assert not [low for low in web2.values() if VIP6 in str(low.args) and low is not vip6]


@pytest.mark.parametrize("method", ["sysctl", "arptables", "nft-arp"])
def test_an_ipv6_only_real_server_gets_no_ipv4_suppression(method: str) -> None:
    web2 = on(compile_real_servers(dual_stack(method, ipv6_only=True)), "web2")
    assert sorted(web2) == ["pkg-lvs-dr", f"vip-{VIP6}"]


def test_redirect_compiles_an_ip6tables_rule_beside_the_iptables_one() -> None:
    web2 = on(compile_real_servers(dual_stack("redirect")), "web2")
    assert web2[f"redirect-tcp-{VIP6}-80"].args == {
        "destination": VIP6, "protocol": "tcp", "dport": 80,
    }  # fmt: skip
    args = iptables.RedirectArgs(destination=VIP6, protocol="tcp", dport=80)
    key = iptables.key_of(args)
    assert key == f"nat PREROUTING -d {VIP6}/128 -p tcp -m tcp --dport 80 -j REDIRECT"
    assert iptables._from_key(key) == args
    v4 = iptables.RedirectArgs(destination="10.77.0.100", protocol="tcp", dport=80)
    assert iptables.key_of(v4) == (
        "nat PREROUTING -d 10.77.0.100/32 -p tcp -m tcp --dport 80 -j REDIRECT"
    )
    assert iptables._from_key(iptables.key_of(v4)) == v4


def _steps(plan: Plan, host: str) -> dict[str, tuple[tuple[str, ...], ...]]:
    return {s.state_id: s.commands for s in plan.hosts[host].steps}


def _restore(plan: Plan, host: str) -> str:
    for step in plan.hosts[host].steps:
        for write in step.writes:
            if write.path == RESTORE_SCRIPT:
                return write.content
    raise AssertionError(f"no restore script for {host}")


@pytest.mark.parametrize("method", ["sysctl", "arptables", "nft-arp"])
def test_the_plan_adds_the_ipv6_vip_nodad_and_restores_it_at_boot(method: str) -> None:
    plan = plan_desired(dual_stack(method), facts_v6(dual_stack(method)))
    assert _steps(plan, "web2")[f"vip-{VIP6}"] == (
        ("ip", "addr", "add", f"{VIP6}/128", "dev", "lo", "nodad"),
    )
    step = next(s for s in plan.hosts["web2"].steps if s.state_id == f"vip-{VIP6}")
    assert step.undo == (("ip", "addr", "del", f"{VIP6}/128", "dev", "lo"),)
    restore = _restore(plan, "web2")
    assert f"ip addr replace {VIP6}/128 dev lo nodad" in restore
    # ARP suppression before the VIPs at boot, as for IPv4.
    assert restore.index("10.77.0.100") < restore.index(VIP6)


def test_the_plan_appends_the_ip6tables_redirect_and_persists_it() -> None:
    plan = plan_desired(dual_stack("redirect"), facts_v6(dual_stack("redirect")))
    rule = ("-d", f"{VIP6}/128", "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "REDIRECT")
    step = next(s for s in plan.hosts["web2"].steps if s.state_id == f"redirect-tcp-{VIP6}-80")
    assert step.commands == (("ip6tables", "-t", "nat", "-A", "PREROUTING", *rule),)
    assert step.undo == (("ip6tables", "-t", "nat", "-D", "PREROUTING", *rule),)
    restore = _restore(plan, "web2")
    assert (
        f"ip6tables -t nat -C PREROUTING -d {VIP6}/128 -p tcp -m tcp --dport 80 -j REDIRECT "
        f"2>/dev/null || ip6tables -t nat -A PREROUTING -d {VIP6}/128 -p tcp -m tcp --dport 80 "
        "-j REDIRECT"
    ) in restore
    assert "nat_rule PREROUTING -d 10.77.0.100/32" in restore
    # The phase snapshots (and its rollback proves) both tables.
    targets = snapshot_targets(plan.hosts["web2"].steps)
    assert (targets.iptables_tables, targets.ip6tables_tables) == (("nat",), ("nat",))
    assert {"iptables_nat", "ip6tables_nat", "nft_tables"} <= set(targets.section_names())


def test_an_ip6tables_rule_already_there_is_not_added_and_unknown_rules_block() -> None:
    spec = ("-d", f"{VIP6}/128", "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "REDIRECT")
    there = IptablesNat(backend="nft", rules=(IptablesRule(chain="PREROUTING", spec=spec),))
    facts = facts_v6(dual_stack("redirect"))
    facts["web2"] = facts["web2"].model_copy(update={"ip6tables_nat": Fact.of(there)})
    facts["web3"] = facts["web3"].model_copy(
        update={"ip6tables_nat": Fact[IptablesNat].unknown("ip6tables-save -t nat exited 4")}
    )
    plan = plan_desired(dual_stack("redirect"), facts)
    assert f"redirect-tcp-{VIP6}-80" not in _steps(plan, "web2")
    assert "redirect-tcp-10.77.0.100-80" in _steps(plan, "web2")
    # Unknown is never absent: web3's IPv6 rule is not planned blind.
    assert f"redirect-tcp-{VIP6}-80" not in _steps(plan, "web3")
    assert "ip6tables" in (plan.hosts["web3"].blocked or "")


def test_an_ipv6_vip_on_a_real_servers_eth0_is_a_violation_and_on_lo_is_not() -> None:
    desired = dual_stack("sysctl")
    on_eth0 = add_addresses(all_fresh()["web2"], [("eth0", VIP6, 128)])
    findings = check_host("web2", on_eth0, desired, (), {})
    assert findings.violations == (
        f"web2 holds {VIP6}/128 on eth0: it answers Neighbour Solicitations for it there (no "
        "ARP rule or table sees Neighbour Discovery), for a VIP that only the active director "
        "may answer for; a real server holds an IPv6 VIP on lo (after this plan too)",
    )
    on_lo = add_addresses(all_fresh()["web2"], [("lo", VIP6, 128)])
    assert check_host("web2", on_lo, desired, (), {}).violations == ()
