"""shoal-healthd on an ipvsadm VM director (real IPVS): a dead real server goes to weight 0.

shoal converges an ipvsadm cluster (tcp check every 2 s) on the session's VM directors; its
apply writes /usr/local/sbin/shoal-healthd and /etc/shoal/healthd.json on both. The guests run
no systemd, so the test starts the checker on lvs1 (the VIP holder) with the unit's ExecStart.
web1's HTTP service stops: lvs1's `ipvsadm -Sn` must show web1 at `-w 0`, client traffic
through the VIP reach web2 only, and a plan made now must not raise web1's weight (it notes
that the checker holds it). web1 starts again: its weight comes back and traffic reaches it.

Cost: the session's VM lab (shared with the other VM modules) plus about 130 s here on a loaded
machine (most of it the converge and the two 2-s-interval transitions).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from lab.httpd import run_load, start_services, stop_services
from reconciler.plan.compile_health import AGENT_PATH, CONFIG_PATH, STATE_PATH
from tests.lab.ipvs_vm_support import (
    PORT,
    VM_TEST_MARKS,
    VmDrLab,
    converge,
    skip_module_unless_wanted,
    transport_for,
)
from tests.lab.rollout_support import plan_for

pytestmark = VM_TEST_MARKS
skip_module_unless_wanted()

# The unit's ExecStart (reconciler.plan.compile_health), detached; prints the checker's pid.
_START = (
    'mkdir -p "$(dirname "$3")" && '
    'setsid python3 "$1" "$2" "$3" </dev/null >>/var/lib/shoal/healthd/log 2>&1 & echo $!'
)


async def _until(what: str, ok: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await ok():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.5)


async def test_a_dead_real_server_goes_to_weight_zero_and_comes_back(vm_dr_lab: VmDrLab) -> None:
    vm, lab = vm_dr_lab, vm_dr_lab.lab
    await vm.use_backend("ipvsadm")
    desired = vm.services_desired("ipvsadm", [100], {"web1": 1, "web2": 1})
    vip = vm.vip(100)
    web1 = f"{lab.host('web1').address}:{PORT}"
    _, after = await converge(lab, desired)
    assert after.empty, after
    assert f"-r {web1} -g -w 1" in await vm.ipvs_save("lvs1")
    res = await lab.exec("lvs1", ["sh", "-c", _START, "sh", AGENT_PATH, CONFIG_PATH, STATE_PATH])
    pid = str(res.stdout).strip()
    assert pid.isdigit(), res
    try:
        await stop_services(lab, ["web1"])

        async def web1_at_zero() -> bool:
            return f"-r {web1} -g -w 0" in await vm.ipvs_save("lvs1")

        await _until("web1 at weight 0 on lvs1", web1_at_zero)
        load = await run_load(lab, "client1", vip, PORT, count=20)
        assert load["answered_by"] == {"web2": 20}, load
        state = str((await lab.exec("lvs1", ["cat", STATE_PATH])).stdout)
        assert f"tcp {vip}:{PORT} web1" in state, state
        async with transport_for(lab, desired) as t:
            plan = await plan_for(desired, t)
        lvs1 = plan.hosts["lvs1"]
        assert not [s for s in lvs1.steps if web1 in " ".join(" ".join(c) for c in s.commands)]
        assert any("web1 is held out by shoal-healthd" in n for n in lvs1.notes), lvs1.notes

        await start_services(lab, [PORT], ["web1"])

        async def web1_back() -> bool:
            return f"-r {web1} -g -w 1" in await vm.ipvs_save("lvs1")

        await _until("web1 back at weight 1 on lvs1", web1_back)
        load = await run_load(lab, "client1", vip, PORT, count=20)
        # wlc: web2 still counts the closed connections of the round above (TIME_WAIT), so the
        # new ones go to web1 first; that it gets traffic again is the point.
        assert load["failed"] == 0 and load["answered_by"].get("web1", 0) > 0, load
    finally:
        await lab.exec("lvs1", ["kill", pid], check=False)
        await lab.exec("lvs1", ["rm", "-f", STATE_PATH], check=False)
        await start_services(lab, [PORT], ["web1"])
        vm.backend = None  # the next module starts from clean directors
