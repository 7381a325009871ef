"""The IPVS VM director scenarios, run once per backend (`ipvsadm`, `keepalived`) by the
test_ipvs_vm_* modules on the session's two-VM-director lab (ipvs_vm_support).

Everything goes through shoal's real path: a config repo, the loader, facts gathered over SSH
(`ipvsadm -Sn` / `-Ln` from the live IPVS tables in the VMs), `plan_desired`, `apply_plan` with
its verification phase (client traffic through real IPVS in DR mode, ARP for the VIP), and a
plan that must be empty afterwards.
"""

from __future__ import annotations

import asyncio
import time

from reconciler.executor import apply_plan
from reconciler.runresult import RunResult
from tests.lab.ipvs_vm_support import (
    DIRECTORS,
    PORT,
    VmDrLab,
    clear_failure,
    converge,
    inject_failure_when,
    transport_for,
)
from tests.lab.rollout_support import explain, pending, plan_for, under_load

START = {"web1": 1, "web2": 2}
AFTER_DRAIN = {"web1": 1, "web3": 2}


def _verified(result: RunResult | None, vm: VmDrLab, vips: list[str]) -> None:
    """The run applied and its verification saw DR through lvs1, and ARP only from lvs1."""
    assert result is not None, "nothing was planned"
    assert result.ok, explain(result)
    v = result.verification
    assert v is not None and v.ok, explain(result)
    lab = vm.lab
    for svc in v.services:
        assert svc.vip in vips and svc.director == "lvs1", svc
        assert svc.failed == 0 and svc.ok > 0, svc
        assert svc.forward_packets and svc.return_packets == 0, svc
        for rs in svc.real_servers:
            # Counted where the connections landed (the TCP check sends no HTTP request).
            assert rs.weight == 0 or rs.received, svc
    assert {a.vip for a in v.arp} == set(vips), v.arp
    lvs1_mac = lab.hosts["lvs1"].mac.lower()
    for arp in v.arp:
        # Only the active director answers ARP for the VIP, and the client sends to it.
        assert arp.director == "lvs1" and arp.expected_mac == lvs1_mac, arp
        assert arp.responders and {r.host for r in arp.responders} == {"lvs1"}, arp
        assert arp.neighbour_host == "lvs1", arp
    assert {s.vip for s in v.services} == set(vips)


async def apply_and_verify(vm: VmDrLab, backend: str) -> None:
    """From clean directors: plan from the live (empty) IPVS tables, apply, verify."""
    lab = vm.lab
    vip = vm.vip(100)
    await vm.reset_directors()
    foreign = f"{vm.vip(150)}:8080"
    if backend == "ipvsadm":
        # Someone else's service: shoal plans around it and never touches it.
        await lab.exec("lvs1", ["ipvsadm", "-A", "-t", foreign, "-s", "rr"])
    started = time.monotonic()
    result, after = await converge(lab, vm.desired(backend, START))
    print(f"\n{backend}: first apply and verification in {time.monotonic() - started:.1f} s")
    _verified(result, vm, [vip])
    assert after.empty, pending(after)
    web = {h: lab.hosts[h].address for h in ("web1", "web2")}
    for host in DIRECTORS:
        save = await vm.ipvs_save(host)
        assert f"-A -t {vip}:{PORT} -s wlc" in save, save
        assert f"-a -t {vip}:{PORT} -r {web['web1']}:{PORT} -g -w 1" in save, save
        assert f"-a -t {vip}:{PORT} -r {web['web2']}:{PORT} -g -w 2" in save, save
    await vm.wait_holders(vip, ["lvs1"])
    if backend != "ipvsadm":
        return
    assert f"-A -t {foreign} -s rr" in await vm.ipvs_save("lvs1")
    await lab.exec("lvs1", ["ipvsadm", "-D", "-t", foreign])
    # Drift in a live table is planned from it: a weight changed by hand on the backup.
    rip = f"{web['web2']}:{PORT}"
    await lab.exec("lvs2", ["ipvsadm", "-e", "-t", f"{vip}:{PORT}", "-r", rip, "-g", "-w", "5"])
    desired = vm.desired(backend, START)
    async with transport_for(lab, desired) as t:
        plan = await plan_for(desired, t)
    commands = [c for hp in plan.hosts.values() for s in hp.steps for c in s.commands]
    assert ("ipvsadm", "-e", "-t", f"{vip}:{PORT}", "-r", rip, "-g", "-w", "2") in commands, (
        commands
    )
    assert set(plan.hosts) <= {"lvs2"} or not any(
        hp.steps for h, hp in plan.hosts.items() if h != "lvs2"
    ), pending(plan)
    await lab.exec("lvs2", ["ipvsadm", "-e", "-t", f"{vip}:{PORT}", "-r", rip, "-g", "-w", "2"])


async def drain_under_load(vm: VmDrLab, backend: str) -> None:
    """web3 joins and web2 is drained and removed while client1 sends requests: none fails."""
    lab = vm.lab
    vip = vm.vip(100)
    result, after = await converge(lab, vm.desired(backend, START))
    assert result is None or result.ok, explain(result)
    desired = vm.desired(backend, AFTER_DRAIN)
    started = time.monotonic()
    outcome, load = await under_load(lab, vip, lambda: converge(lab, desired))
    result, after = outcome
    print(f"\n{backend}: join + drain + remove under load in {time.monotonic() - started:.1f} s;"
          f" {load.summary()}")  # fmt: skip
    _verified(result, vm, [vip])
    assert after.empty, pending(after)
    assert load.failed == 0, load.summary()
    assert load.requests >= 40, load.summary()
    assert load.after["web3"] > 0 and "web2" not in load.after, load.summary()
    assert result is not None
    # The primary's drain ended because web2's connections had ended, not by its timeout.
    drains = [s for s in result.steps() if s.host == "lvs1" and "drain" in s.id]
    assert drains and all("drained in" in s.comment for s in drains), explain(result)
    web2 = lab.hosts["web2"].address
    for host in DIRECTORS:
        save = await vm.ipvs_save(host)
        assert web2 not in save and lab.hosts["web3"].address in save, save


async def injected_failure_rolls_back(vm: VmDrLab, backend: str) -> None:
    """A step on lvs1 fails after lvs1's IPVS table changed: lvs1 is rolled back, its
    `ipvsadm -Sn` and addresses byte for byte as before. (Phases that finished before, on the
    real servers and the backup lvs2, stay applied: the executor rolls back the failed phase.)"""
    lab = vm.lab
    result, _ = await converge(lab, vm.desired(backend, AFTER_DRAIN))
    assert result is None or result.ok, explain(result)
    before = (await vm.ipvs_save("lvs1"), await vm.addresses("lvs1"))
    nth = 1
    if backend == "ipvsadm":
        # A second service: lvs1 adds it to IPVS (-A, -a, -e), then its VIP, which fails.
        desired = vm.desired(backend, AFTER_DRAIN, extra_vip=True)
        path, args = "/usr/sbin/ip", f" add {vm.vip(101)}/32 "
        failing = "addr.present"
    else:
        # web3 leaves: lvs1 installs the drain config (web3 at weight 0), keepalived sets the
        # weight in IPVS, the drain ends, then the final config fails its validation.
        desired = vm.desired(backend, {"web1": 1})
        path, args, nth = "/usr/sbin/keepalived", " -t ", 2
        failing = "keepalived.config"
    async with transport_for(lab, desired) as t:
        plan = await plan_for(desired, t)
        await inject_failure_when(lab, "lvs1", path, args, nth)
        try:
            result = await apply_plan(plan, desired, t)
        finally:
            await clear_failure(lab, "lvs1", path)
    assert not result.ok, explain(result)
    failed = [s for s in result.steps() if s.result is False]
    assert [(s.host, s.function) for s in failed] == [("lvs1", failing)], explain(result)
    assert "injected failure" in (failed[0].output or ""), explain(result)
    ipvs_steps = [s for s in result.steps() if s.host == "lvs1" and s.result]
    assert ipvs_steps and all(s.rolled_back for s in ipvs_steps), explain(result)
    assert [(rb.host, rb.proven) for rb in result.rollbacks] == [("lvs1", True)], explain(result)
    # keepalived applies a reload a moment after the signal: give it that moment.
    give_up = time.monotonic() + 10
    while True:
        now = (await vm.ipvs_save("lvs1"), await vm.addresses("lvs1"))
        if now == before or time.monotonic() > give_up:
            break
        await asyncio.sleep(0.2)
    assert now == before
    # Back to the state the next scenario starts from.
    result, after = await converge(lab, vm.desired(backend, AFTER_DRAIN))
    assert result is None or result.ok, explain(result)
    assert after.empty, pending(after)
