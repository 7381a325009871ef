"""The `keepalived` director backend on two VM directors with real IPVS (issue 8).

lvs1 (MASTER) and lvs2 (BACKUP) are qemu VMs booted once per session (`vm_dr_lab`); shoal renders
keepalived.conf for each, keepalived programs the real IPVS tables and runs VRRP between the VMs
for the VIP. The scenarios shared with the ipvsadm backend are in ipvs_vm_scenarios.py: plan from
the live tables, apply and verify with client traffic through IPVS in DR mode; a real server
drained and removed under load with no failed request. Here also: an injected failure after
keepalived has reloaded the new config on lvs1 is rolled back to lvs1's identical `ipvsadm -Sn`
and addresses (the old config back, keepalived reloaded), proven by the executor; and a
keepalived failover and failback under client load, with its loss window (ipvs_vm_failover.py).
The tests run in order, each starting from what the one before left (`VmDrLab.use_backend`).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from reconciler.apply.executor import apply_plan
from reconciler.desired.models import Desired
from tests.lab import ipvs_vm_dual_stack, ipvs_vm_failover
from tests.lab import ipvs_vm_scenarios as scenarios
from tests.lab.ipvs_vm_inject import clear_failure, inject_failure_when
from tests.lab.ipvs_vm_support import (
    PORT,
    VM_TEST_MARKS,
    VmDrLab,
    skip_module_unless_wanted,
    transport_for,
)
from tests.lab.rollout_support import explain, pending, plan_and_facts, plan_for

pytestmark = VM_TEST_MARKS
skip_module_unless_wanted()

BACKEND = "keepalived"
WEIGHTS = {"web1": 1, "web2": 2}
MV = "/usr/bin/mv"  # what the executor's file writes end with (reconciler/apply/phase_script.py)
LEDGER = "/var/lib/shoal/ledger.json"
SETTLE = 30.0  # seconds for keepalived to program IPVS and VRRP to place the VIPs


async def test_plan_from_live_tables_apply_and_verify(vm_dr_lab: VmDrLab) -> None:
    await scenarios.apply_and_verify(vm_dr_lab, BACKEND)


async def test_join_then_drain_and_remove_under_load_lose_nothing(vm_dr_lab: VmDrLab) -> None:
    await scenarios.join_drain_and_remove_under_load(vm_dr_lab, BACKEND)


def _desired(vm: VmDrLab, octets: list[int]) -> Desired:
    return vm.services_desired(BACKEND, octets, WEIGHTS)


async def _settled(vm: VmDrLab, host: str, vips: list[str]) -> str:
    """lvs1's `ipvsadm -Sn` once keepalived has programmed every VIP's service and servers."""
    lab = vm.lab
    want = [f"-A -t {v}:{PORT} -s wlc" for v in vips] + [
        f"-a -t {v}:{PORT} -r {lab.hosts[h].address}:{PORT} -g -w {w}"
        for v in vips
        for h, w in WEIGHTS.items()
    ]
    give_up = time.monotonic() + SETTLE
    while True:
        save = await vm.ipvs_save(host)
        if all(line in save for line in want):
            return save
        if time.monotonic() > give_up:
            pytest.fail(f"{host}: keepalived did not program {want}: {save}")
        await asyncio.sleep(0.5)


async def test_failure_after_keepalived_reload_is_rolled_back_byte_for_byte(
    vm_dr_lab: VmDrLab,
) -> None:
    vm, lab = vm_dr_lab, vm_dr_lab.lab
    old_vip, new_vip = vm.vip(100), vm.vip(101)
    await vm.use_backend(BACKEND)
    one = _desired(vm, [100])  # what the previous test left: nothing to do then
    async with transport_for(lab, one) as t:
        plan, facts = await plan_and_facts(one, t)
        if not plan.empty:
            result = await apply_plan(plan, one, t, facts=facts)
            assert result.ok, explain(result)
    await vm.wait_holders(old_vip, ["lvs1"], SETTLE)
    before = (await _settled(vm, "lvs1", [old_vip]), await vm.addresses("lvs1"))
    conf_before = (await lab.exec("lvs1", ["cat", "/etc/keepalived/keepalived.conf"])).stdout

    two = _desired(vm, [100, 101])
    async with transport_for(lab, two) as t:
        plan, facts = await plan_and_facts(two, t)
        lvs1 = [s.id for s in plan.hosts["lvs1"].steps]
        reload = next(i for i, sid in enumerate(lvs1) if sid.endswith("/reload"))
        ledger = next(i for i, sid in enumerate(lvs1) if sid.endswith("shoal-ledger/write"))
        assert reload < ledger, lvs1
        # The ledger write on lvs1 comes after keepalived has reloaded the new config.
        await inject_failure_when(lab, "lvs1", MV, f" {LEDGER}")
        try:
            result = await apply_plan(plan, two, t, facts=facts)
        finally:
            await clear_failure(lab, "lvs1", MV)

    assert not result.ok, explain(result)
    failed = [s for s in result.steps() if s.result is False]
    assert [(s.host, s.id) for s in failed] == [("lvs1", lvs1[ledger])], explain(result)
    done = [s for s in result.steps() if s.host == "lvs1" and s.result]
    assert any(s.id.endswith("/reload") for s in done), explain(result)
    assert all(s.rolled_back for s in done), explain(result)
    assert [(rb.host, rb.by, rb.proven) for rb in result.rollbacks] == [("lvs1", "phase", True)], (
        explain(result)
    )
    # The old config is back, and keepalived runs it: the same IPVS table and addresses.
    conf = (await lab.exec("lvs1", ["cat", "/etc/keepalived/keepalived.conf"])).stdout
    assert conf == conf_before
    assert await vm.ipvs_save("lvs1") == before[0]
    assert await vm.addresses("lvs1") == before[1]
    assert new_vip not in await vm.ipvs_save("lvs1")

    # lvs2's finished phase stays applied (executor policy); a re-apply of the old config
    # converges everything back.
    assert f"-A -t {new_vip}:{PORT} -s wlc" in await _settled(vm, "lvs2", [old_vip, new_vip])
    async with transport_for(lab, one) as t:
        plan, facts = await plan_and_facts(one, t)
        result = await apply_plan(plan, one, t, facts=facts)
        assert result.ok, explain(result)
        after = await plan_for(one, t)
    assert after.empty, pending(after)
    assert await _settled(vm, "lvs1", [old_vip]) == before[0]


async def test_keepalived_failover_between_vm_directors_reports_loss_window(
    vm_dr_lab: VmDrLab,
) -> None:
    await ipvs_vm_failover.failover_reports_loss_window(vm_dr_lab)


async def test_dual_stack_converges_rolls_out_fails_over_and_rolls_back(
    vm_dr_lab: VmDrLab,
) -> None:
    """Issue 16 on keepalived VM directors (tests/lab/ipvs_vm_dual_stack.py): six applies and a
    failover through the emulated VMs, about 3 minutes on a loaded machine (90-200 s measured)."""
    await ipvs_vm_dual_stack.dual_stack(vm_dr_lab, BACKEND)
