"""The `ipvsadm` director backend on two VM directors with real IPVS (issue 8).

lvs1 (primary, holds the VIP) and lvs2 (backup) are qemu VMs booted once per session
(`vm_dr_lab`); the tests run in order, each starting from what the one before left.

1. shoal plans from their live `ipvsadm -Sn` (leaving a service it does not own alone, and
   planning `-e` for a weight changed by hand), applies -A and -a at weight 0 then -e, and
   verifies with client traffic through the real IPVS in DR mode (ipvs_vm_scenarios.py).
2. Under client load, web3 joins and then is drained and removed: no request fails.
3. An injected failure after IPVS changes, rolled back byte for byte: from one service, a second
   one (VIP .101) is applied. On lvs1 (the primary, the last phase) `ipvsadm -A`, `-a` and `-e`
   succeed and then `ip addr add` of the new VIP fails (ipvs_vm_inject.py). What the executor
   promises (reconciler/apply/executor.py): the failed host phase restores itself and the restore is
   proven against its snapshot and facts; phases that finished before it on other hosts (the
   real servers' prepare, the backup lvs2) stay applied, since they are not real-server batches
   of the failed phase; nothing after it runs and no verification runs. So lvs1's
   `ipvsadm -Sn` and addresses must be byte for byte what they were, lvs2 keeps the new service,
   and a plain re-apply of the old config converges everything back.
4. A reboot simulation: the directors' IPVS tables, VIPs and ip_vs module gone, shoal-restore
   (the boot unit's script) brings them back, IPVS sysctls included, and the plan is empty.
"""

from __future__ import annotations

from reconciler.apply.executor import apply_plan
from reconciler.desired.models import Desired
from reconciler.plan.compile_director import IPVS_SYSCTLS
from reconciler.plan.persistence import RESTORE_SCRIPT
from tests.lab import ipvs_vm_scenarios as scenarios
from tests.lab.ipvs_vm_inject import clear_failure, inject_failure_when
from tests.lab.ipvs_vm_support import (
    DIRECTORS,
    VM_TEST_MARKS,
    VmDrLab,
    skip_module_unless_wanted,
    transport_for,
)
from tests.lab.rollout_support import explain, pending, plan_for

pytestmark = VM_TEST_MARKS
skip_module_unless_wanted()

BACKEND = "ipvsadm"


async def test_plan_from_live_tables_apply_and_verify(vm_dr_lab: VmDrLab) -> None:
    await scenarios.apply_and_verify(vm_dr_lab, BACKEND)


async def test_join_then_drain_and_remove_under_load_lose_nothing(vm_dr_lab: VmDrLab) -> None:
    await scenarios.join_drain_and_remove_under_load(vm_dr_lab, BACKEND)


WEIGHTS = {"web1": 1, "web2": 2}
IP = "/usr/sbin/ip"  # `ip` on the guest (the shared root is merged-/usr Debian: /sbin -> usr/sbin)


def _desired(vm: VmDrLab, octets: list[int]) -> Desired:
    return vm.services_desired(BACKEND, octets, WEIGHTS)


async def test_failed_vip_add_after_ipvs_changes_is_rolled_back_byte_for_byte(
    vm_dr_lab: VmDrLab,
) -> None:
    vm, lab = vm_dr_lab, vm_dr_lab.lab
    await vm.use_backend(BACKEND)
    one = _desired(vm, [100])  # what the previous test left: nothing to do then
    async with transport_for(lab, one) as t:
        plan = await plan_for(one, t)
        if not plan.empty:
            result = await apply_plan(plan, one, t)
            assert result.ok, explain(result)
        assert (await plan_for(one, t)).empty
    before = {h: (await vm.ipvs_save(h), await vm.addresses(h)) for h in ("lvs1", "lvs2")}
    new_vip = vm.vip(101)

    two = _desired(vm, [100, 101])
    async with transport_for(lab, two) as t:
        plan = await plan_for(two, t)
        await inject_failure_when(lab, "lvs1", IP, f" add {new_vip}/32 ")
        try:
            result = await apply_plan(plan, two, t)
        finally:
            await clear_failure(lab, "lvs1", IP)

    assert not result.ok, explain(result)
    failed = [s for s in result.steps() if s.result is False]
    assert [(s.host, s.function) for s in failed] == [("lvs1", "addr.present")], explain(result)
    assert "injected failure" in failed[0].output, explain(result)
    assert [(e.kind, e.host) for e in result.errors] == [("ApplyError", "lvs1")], explain(result)
    assert result.verification is None, explain(result)
    # lvs1 changed its IPVS table before the failure, and exactly that was undone and proven.
    lvs1_done = [s for s in result.steps() if s.host == "lvs1" and s.result]
    assert {s.function for s in lvs1_done} >= {
        "ipvs.service_present",
        "ipvs.real_server_present",
    }, explain(result)
    assert all(s.rolled_back for s in lvs1_done), explain(result)
    assert [(rb.host, rb.phase, rb.by, rb.proven) for rb in result.rollbacks] == [
        ("lvs1", "director_primary", "phase", True)
    ], explain(result)
    assert await vm.ipvs_save("lvs1") == before["lvs1"][0]
    assert await vm.addresses("lvs1") == before["lvs1"][1]
    # The phases that finished before stay applied (executor policy), and are reported so.
    others = [s for s in result.steps() if s.host != "lvs1" and s.result]
    assert {s.host for s in others} >= {"lvs2", "web1", "web2"}, explain(result)
    assert not any(s.rolled_back for s in others), explain(result)
    assert f"-A -t {new_vip}:80 -s wlc" in await vm.ipvs_save("lvs2")

    # A re-apply of the old config takes the rest back; lvs2's table is then as it was.
    async with transport_for(lab, one) as t:
        plan = await plan_for(one, t)
        result = await apply_plan(plan, one, t)
        assert result.ok, explain(result)
        after = await plan_for(one, t)
    assert after.empty, pending(after)
    assert await vm.ipvs_save("lvs2") == before["lvs2"][0]
    assert await vm.ipvs_save("lvs1") == before["lvs1"][0]


# A reboot as far as the director's kernel state goes: no IPVS table, ip_vs unloaded (so its
# sysctls are back at their defaults), no VIP. Test-side, on the test's own VMs.
_REBOOT = """set -eu
ipvsadm -C
for m in $(awk '$1 ~ /^ip_vs_/ { print $1 }' /proc/modules); do modprobe -r "$m"; done
modprobe -r ip_vs
for a in $(ip -o -4 addr show dev eth0 | awk '{ print $4 }'); do
  case ${a%/*} in *.1[0-9][0-9]) ip addr del "$a" dev eth0 ;; esac
done
"""


async def test_boot_restore_brings_the_director_back(vm_dr_lab: VmDrLab) -> None:
    """shoal-restore (what shoal-restore.service runs at boot) on a director whose runtime state
    is gone: the IPVS table, the VIP and the IPVS sysctls come back, and the plan is empty."""
    vm, lab = vm_dr_lab, vm_dr_lab.lab
    await vm.use_backend(BACKEND)
    one = _desired(vm, [100])
    async with transport_for(lab, one) as t:
        plan = await plan_for(one, t)
        if not plan.empty:
            result = await apply_plan(plan, one, t)
            assert result.ok, explain(result)
    sysctls = ["sysctl", "-n", *IPVS_SYSCTLS]

    async def state(host: str) -> tuple[str, str, str]:
        values = (await lab.exec(host, sysctls)).stdout
        return await vm.ipvs_save(host), await vm.addresses(host), values

    before = {h: await state(h) for h in DIRECTORS}
    assert before["lvs1"][2].split() == ["1", "1"], before
    for host in DIRECTORS:
        await lab.exec(host, ["sh", "-c", _REBOOT])
        gone = await lab.exec(host, ["test", "-e", "/proc/sys/net/ipv4/vs"], check=False)
        assert gone.returncode != 0, f"{host}: ip_vs is still loaded"
        await lab.exec(host, [RESTORE_SCRIPT])
    assert {h: await state(h) for h in DIRECTORS} == before
    async with transport_for(lab, one) as t:
        after = await plan_for(one, t)
    assert after.empty, pending(after)
