"""The planner across a change of shape: a director VIP moving, IPVS missing, a host left behind.

- ipvsadm/nftables: when the primary changes, the old holder drops the VIP in DIRECTOR_BACKUP,
  before the new primary adds it in DIRECTOR_PRIMARY (never both at once: an ARP fight);
- ipvsadm on a kernel without IPVS: one `modprobe ip_vs` step in PACKAGES, before any change,
  whose description says why it will fail;
- a host no cluster uses any more: its removals, then shoal's own files (ledger, nft files)
  instead of an empty ledger; the next plan is empty.
Also the phase script's snapshot of files only a command touches (rm -f, systemctl enable).
"""

from __future__ import annotations

from reconciler.apply.snapshot_targets import WANTS_DIR, command_files, snapshot_targets
from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import Fact, HostFacts, IpvsTable, Ledger
from reconciler.plan.compile import managed_paths
from reconciler.plan.leftovers import LEDGER_FILE
from reconciler.plan.persistence import RESTORE_SCRIPT, RESTORE_UNIT_PATH
from reconciler.plan.planner import LEDGER_PATH, plan_desired
from reconciler.plan.steps import Phase, Plan, Step
from states.nft_dsr import SCRIPT_PATH
from tests.statecases import (
    HOSTS,
    VIP_DNS,
    VIP_HTTP,
    add_addresses,
    cluster_desired,
    fresh_facts,
    gathered,
    with_files,
)


def _facts(desired: Desired, **overrides: HostFacts) -> dict[str, HostFacts]:
    paths = managed_paths(desired)
    out = {h: gathered(fresh_facts(h), paths.get(h, [])) for h in HOSTS}
    for host, f in overrides.items():
        out[host] = gathered(f, paths.get(host, []))
    return out


def _with_ipvs(f: HostFacts) -> HostFacts:
    return f.model_copy(update={"ipvs": Fact.of(IpvsTable(available=True, loaded=True))})


def _swap_primary(desired: Desired) -> Desired:
    cl = desired.clusters["web"]
    header = cl.cluster.model_copy(update={"directors": ("lvs2", "lvs1")})
    return desired.model_copy(
        update={"clusters": {"web": cl.model_copy(update={"cluster": header})}}
    )


def _step(plan: Plan, host: str, sid: str) -> Step:
    (step,) = [s for s in plan.hosts[host].steps if s.id == sid]
    return step


def _old_primary(desired: Desired) -> HostFacts:
    """lvs1 as the previous plan left it: the VIPs on eth0, recorded in its ledger."""
    lvs1 = add_addresses(_with_ipvs(fresh_facts("lvs1")), [("eth0", VIP_HTTP, 32),
                                                            ("eth0", VIP_DNS, 32)])  # fmt: skip
    keys = (f"{VIP_HTTP}/32 dev eth0", f"{VIP_DNS}/32 dev eth0")
    return lvs1.model_copy(update={"ledger": Fact.of(Ledger(entries={"addr.present": keys}))})


def test_moving_director_vip_is_dropped_before_the_new_primary_adds_it() -> None:
    for backend in ("ipvsadm", "nftables"):
        desired = _swap_primary(cluster_desired("sysctl", director=backend))
        facts = _facts(desired, lvs1=_old_primary(desired), lvs2=_with_ipvs(fresh_facts("lvs2")))
        plan = plan_desired(desired, facts)
        for vip in (VIP_HTTP, VIP_DNS):
            drop = _step(plan, "lvs1", f"lvs1/remove-addr-{vip}_32_dev_eth0/delete")
            add = _step(plan, "lvs2", f"lvs2/director-vip:web:{vip}/add")
            assert drop.commands == (("ip", "addr", "del", f"{vip}/32", "dev", "eth0"),)
            assert add.commands[0] == ("ip", "addr", "add", f"{vip}/32", "dev", "eth0")
            # ... and the new holder announces it, so clients do not wait for their cache.
            assert add.commands[1][-2:] == ("eth0", vip) and "arping -U" in add.commands[1][2]
            # The executor runs phases in order across hosts: the drop is finished first.
            assert drop.phase == Phase.DIRECTOR_BACKUP < add.phase == Phase.DIRECTOR_PRIMARY, (
                backend
            )


def test_vip_that_leaves_every_director_still_goes_last() -> None:
    desired = cluster_desired("sysctl", director="ipvsadm", real_servers=())
    facts = _facts(desired, lvs1=_old_primary(desired))
    plan = plan_desired(desired, facts)
    drop = _step(plan, "lvs1", f"lvs1/remove-addr-{VIP_HTTP}_32_dev_eth0/delete")
    assert drop.phase == Phase.REAL_SERVERS_CLEANUP


def test_kernel_without_ipvs_gets_one_clearly_failing_step_first() -> None:
    desired = cluster_desired("sysctl", director="ipvsadm")
    facts = _facts(desired)  # fresh_facts: IpvsTable(available=False)
    plan = plan_desired(desired, facts)
    for host in ("lvs1", "lvs2"):
        first = plan.hosts[host].steps[0]
        assert first.id == f"{host}/kmod-ip_vs/load"
        assert first.phase == Phase.PACKAGES and first.subsystem == "pkg"
        assert first.commands == (("modprobe", "ip_vs"),)
        assert "IPVS" in first.description and "will fail" in first.description
        ipvs = [s for s in plan.hosts[host].steps if s.subsystem == "ipvs"]
        assert ipvs and all(s.phase > Phase.PACKAGES for s in ipvs)
    # Where the kernel has IPVS, no such step.
    ok = _facts(desired, lvs1=_with_ipvs(fresh_facts("lvs1")), lvs2=_with_ipvs(fresh_facts("lvs2")))
    steps = [s.id for h in ("lvs1", "lvs2") for s in plan_desired(desired, ok).hosts[h].steps]
    assert not [s for s in steps if "kmod" in s]


def test_host_left_by_every_cluster_loses_shoals_own_files() -> None:
    assert LEDGER_FILE == LEDGER_PATH
    desired = cluster_desired("sysctl", real_servers=())
    desired = desired.model_copy(update={"clusters": {}})
    keys = {
        "file.managed": (RESTORE_SCRIPT, RESTORE_UNIT_PATH),
        "service.enabled": ("shoal-restore.service",),
        "addr.present": (f"{VIP_HTTP}/32 dev lo",),
    }
    web1 = add_addresses(fresh_facts("web1"), [("lo", VIP_HTTP, 32)])
    web1 = with_files(web1, {RESTORE_SCRIPT: ("#!/bin/sh\n", "0755"),
                             RESTORE_UNIT_PATH: ("[Unit]\n", "0644"),
                             f"{WANTS_DIR}/shoal-restore.service": ("[Unit]\n", "0644"),
                             LEDGER_PATH: ("{}", "0644")})  # fmt: skip
    web1 = web1.model_copy(update={"ledger": Fact.of(Ledger(entries=keys))})
    # lvs1 kept an empty ledger and the director's nft file from before this was fixed.
    lvs1 = with_files(
        fresh_facts("lvs1"),
        {LEDGER_PATH: ("{}\n", "0644"), SCRIPT_PATH: ("table netdev shoal_dsr {}\n", "0600")},
    )
    plan = plan_desired(desired, _facts(desired, web1=web1, lvs1=lvs1))
    steps = plan.hosts["web1"].steps
    assert [s.id for s in steps] == [
        f"web1/remove-addr-{VIP_HTTP}_32_dev_lo/delete",
        "web1/remove-service-shoal-restore.service/disable",
        f"web1/remove-file-{RESTORE_UNIT_PATH.strip('/').replace('/', '_')}/remove",
        f"web1/remove-file-{RESTORE_SCRIPT.strip('/').replace('/', '_')}/remove",
        "web1/shoal-leftovers/remove",
    ]
    assert steps[-1].commands == (("rm", "-f", LEDGER_PATH),)
    assert set(steps[-1].require) == {s.id for s in steps[:-1]}
    assert not any(w.path == LEDGER_PATH for s in steps for w in s.writes)
    (cleanup,) = plan.hosts["lvs1"].steps
    assert cleanup.commands == (("rm", "-f", SCRIPT_PATH), ("rm", "-f", LEDGER_PATH))
    # After the apply: nothing of shoal's, nothing planned.
    clean = _facts(desired)
    assert plan_desired(desired, clean).empty


def test_host_still_in_a_cluster_keeps_its_ledger() -> None:
    desired = cluster_desired("sysctl")
    plan = plan_desired(desired, _facts(desired))
    assert plan.hosts["web1"].steps[-1].writes[0].path == LEDGER_PATH
    assert not any("shoal-leftovers" in s.id for hp in plan.hosts.values() for s in hp.steps)


def test_files_only_commands_touch_are_snapshotted() -> None:
    assert command_files(("rm", "-f", "/etc/a.conf", "/etc/b.conf")) == [
        "/etc/a.conf",
        "/etc/b.conf",
    ]
    assert command_files(("rm", "-f", "--", "-odd")) == []
    assert command_files(("systemctl", "enable", "x.service")) == [f"{WANTS_DIR}/x.service"]
    assert command_files(("systemctl", "--quiet", "disable", "x.service")) == [
        f"{WANTS_DIR}/x.service"
    ]
    assert command_files(("systemctl", "restart", "x.service")) == []
    step = Step(id="h/s/a", host="h", state_id="s", function="service.enabled",
                subsystem="service", phase=Phase.EXTRA, description="d",
                commands=(("systemctl", "enable", "shoal-restore.service"),),
                undo=(("systemctl", "disable", "shoal-restore.service"),))  # fmt: skip
    assert snapshot_targets([step]).files == (f"{WANTS_DIR}/shoal-restore.service",)
