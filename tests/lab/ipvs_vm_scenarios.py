"""The IPVS VM director scenarios, written per backend, run by the test_ipvs_vm_* modules on
the session's two-VM-director lab (ipvs_vm_support).

Everything goes through shoal's real path: a config repo, the loader, facts gathered over SSH
(`ipvsadm -Sn` / `-Ln` from the live IPVS tables in the VMs), `plan_desired`, `apply_plan` with
its verification phase (client traffic through real IPVS in DR mode, ARP for the VIP), and a
plan that must be empty afterwards.
"""

from __future__ import annotations

import time

from reconciler.apply.executor import apply_plan
from reconciler.apply.runresult import RunResult
from reconciler.plan.steps import Plan
from tests.lab.ipvs_vm_support import (
    DIRECTORS,
    PORT,
    VmDrLab,
    converge,
    transport_for,
)
from tests.lab.rollout_support import (
    LoadReport,
    assert_lossless,
    explain,
    pending,
    plan_and_facts,
    plan_for,
    under_load,
)

START = {"web1": 1, "web2": 2}


def verified(result: RunResult | None, vm: VmDrLab, vips: list[str]) -> None:
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
    vm.backend = backend
    foreign = f"{vm.vip(150)}:8080"
    if backend == "ipvsadm":
        # Someone else's service: shoal plans around it and never touches it.
        await lab.exec("lvs1", ["ipvsadm", "-A", "-t", foreign, "-s", "rr"])
    started = time.monotonic()
    result, after = await converge(lab, vm.desired(backend, START))
    print(f"\n{backend}: first apply and verification in {time.monotonic() - started:.1f} s")
    verified(result, vm, [vip])
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


# web3 joins and web1 and web2 swap their weights in the same change; the change back swaps them
# again while web3 drains: both loaded changes also edit live weights (`-e` / a reload).
THREE = {"web1": 2, "web2": 1, "web3": 2}


async def _weights_are(vm: VmDrLab, weights: dict[str, int]) -> None:
    """Both directors' live IPVS tables have exactly these real servers at these weights."""
    lab, vip = vm.lab, vm.vip(100)
    want = sorted(
        f"-a -t {vip}:{PORT} -r {lab.hosts[h].address}:{PORT} -g -w {w}" for h, w in weights.items()
    )
    for host in DIRECTORS:
        have = sorted(ln for ln in (await vm.ipvs_save(host)).splitlines() if ln.startswith("-a"))
        assert have == want, (host, have)


async def _loaded_change(
    vm: VmDrLab, backend: str, weights: dict[str, int], what: str
) -> tuple[RunResult, LoadReport]:
    """Apply the change to `weights` while client1 sends new connections through the VIP; it
    must apply and leave an empty plan.

    The plan is made before the load starts: gathering facts changes nothing on the hosts, and
    under load it takes the emulated directors twice as long. The apply and the plan after it
    (facts read from tables with live connections) run under the load, as the tail batches do.
    """
    lab = vm.lab
    desired = vm.desired(backend, weights, verify=False)
    async with transport_for(lab, desired) as t:
        plan, facts = await plan_and_facts(desired, t)
        assert not plan.empty, "nothing planned"

        async def change() -> tuple[RunResult, Plan]:
            result = await apply_plan(plan, desired, t, facts=facts)
            return result, await plan_for(desired, t)

        started = time.monotonic()
        (result, after), load = await under_load(lab, vm.vip(100), change, timeout=10.0)
    print(f"\n{backend}: {what} under load: {load.summary()} "
          f"(change {time.monotonic() - started:.1f} s)")  # fmt: skip
    assert result.ok, explain(result)
    assert after.empty, pending(after)
    return result, load


async def join_drain_and_remove_under_load(vm: VmDrLab, backend: str) -> None:
    """While client1 sends a steady stream of new connections through the VIP, web3 joins the
    service (its ARP suppression and VIP first, then the directors add it at weight 0 and raise
    the weight) as web1 and web2 swap weights, and then leaves it again (weight 0, drain, delete
    on each director, then web3's own VIP and ARP states go) as they swap back. No request fails
    in either change, and the live tables have the new weights after each."""
    lab = vm.lab
    vip = vm.vip(100)
    await vm.use_backend(backend)
    result, after = await converge(lab, vm.desired(backend, START, verify=False))
    assert result is None or result.ok, explain(result)
    assert after.empty, pending(after)
    await vm.wait_holders(vip, ["lvs1"])

    _, load = await _loaded_change(vm, backend, THREE, "web3 joins and weights change")
    assert_lossless(load, {"web1", "web2", "web3"})
    assert load.after["web3"] > 0, load.summary()
    await _weights_are(vm, THREE)

    result, load = await _loaded_change(
        vm, backend, START, "drain and removal of web3 and weights back"
    )
    drains = [s.comment for s in result.steps() if "drain" in s.comment]
    print("drains: " + "; ".join(f"{s.host} {s.comment}" for s in result.steps()
                                 if "drain" in s.comment))  # fmt: skip
    # Each director's drain ended because web3's connections had (not by its timeout).
    assert len(drains) == len(DIRECTORS), explain(result)
    assert not any("timed out" in c for c in drains), explain(result)
    assert_lossless(load, {"web1", "web2", "web3"})
    assert "web3" not in load.after, load.summary()
    await _weights_are(vm, START)
