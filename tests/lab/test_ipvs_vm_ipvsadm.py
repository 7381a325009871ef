"""The `ipvsadm` director backend on two VM directors with real IPVS (issue 8).

lvs1 (primary, holds the VIP) and lvs2 (backup) are qemu VMs booted once per session
(`vm_dr_lab`); shoal plans from their live `ipvsadm -Sn` (leaving a service it does not own
alone, and planning `-e` for a weight changed by hand), applies -A and -a at weight 0 then -e,
and verifies with client traffic through the real IPVS in DR mode. The scenario is in
ipvs_vm_scenarios.py.
"""

from __future__ import annotations

import pytest

from tests.lab import ipvs_vm_scenarios as scenarios
from tests.lab.ipvs_vm_support import VmDrLab, vm_tests_wanted

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

if not vm_tests_wanted():
    pytest.skip("SHOAL_VM_TESTS=0: VM director tests left out", allow_module_level=True)

BACKEND = "ipvsadm"


async def test_plan_from_live_tables_apply_and_verify(vm_dr_lab: VmDrLab) -> None:
    await scenarios.apply_and_verify(vm_dr_lab, BACKEND)


async def test_drain_and_remove_under_load_loses_nothing(vm_dr_lab: VmDrLab) -> None:
    await scenarios.drain_and_remove_under_load(vm_dr_lab, BACKEND)
