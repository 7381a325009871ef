"""The `keepalived` director backend on two VM directors with real IPVS (issue 8).

shoal renders keepalived.conf for lvs1 (MASTER) and lvs2 (BACKUP), validates it with
`keepalived -t`, installs it and starts or reloads keepalived, which programs the real IPVS
tables and runs VRRP between the two VMs for the VIP. The shared scenarios (ipvs_vm_scenarios.py)
run here too; then a failover: keepalived on lvs1 stops while client1 sends a request every
50 ms through the VIP, lvs2 takes over, lvs1 comes back and takes the VIP back, and the loss
window of each switch is reported.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import pytest

from states.keepalived import PID_DIR, reload_argv
from tests.lab import ipvs_vm_scenarios as scenarios
from tests.lab.ipvs_vm_support import PORT, VmDrLab, vm_tests_wanted

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

if not vm_tests_wanted():
    pytest.skip("SHOAL_VM_TESTS=0: VM director tests left out", allow_module_level=True)

BACKEND = "keepalived"
VIP_PROBE = Path(__file__).with_name("vip_probe.py")
# VRRP with advert_int 1: a clean stop sends priority 0 (the backup takes over at once); a
# returning primary waits three intervals before it preempts.
MAX_WINDOW = 6.0


async def test_plan_from_live_tables_apply_and_verify(vm_dr_lab: VmDrLab) -> None:
    await scenarios.apply_and_verify(vm_dr_lab, BACKEND)


async def test_join_drain_and_remove_under_load_lose_nothing(vm_dr_lab: VmDrLab) -> None:
    await scenarios.drain_under_load(vm_dr_lab, BACKEND)


async def test_failure_after_ipvs_changes_rolls_back_byte_for_byte(vm_dr_lab: VmDrLab) -> None:
    await scenarios.injected_failure_rolls_back(vm_dr_lab, BACKEND)


Attempts = list[tuple[float, str | None]]


def _window(attempts: Attempts, start: float, end: float) -> tuple[int, float]:
    """Failed probes in [start, end) and the time from the first to the end of the last one."""
    failed = [t for t, who in attempts if start <= t < end and who is None]
    return len(failed), (max(failed) - min(failed) + 0.05) if failed else 0.0


async def test_failover_between_vm_directors_under_load(vm_dr_lab: VmDrLab) -> None:
    vm, lab = vm_dr_lab, vm_dr_lab.lab
    vip = vm.vip(100)
    await vm.wait_holders(vip, ["lvs1"])
    pid_file = f"{PID_DIR}/keepalived.pid"
    until = f"/tmp/shoal-vm-failover-{secrets.token_hex(3)}"
    argv = ["python3", "-", "--vip", vip, "--port", str(PORT), "--until", until,
            "--duration", "90", "--timeout", "1.0"]  # fmt: skip
    probe = asyncio.ensure_future(
        lab.exec("client1", argv, input=VIP_PROBE.read_text(), timeout=120)
    )
    try:
        await asyncio.sleep(1.5)
        stopped = time.time()
        await lab.exec("lvs1", ["sh", "-c", f'kill "$(cat {pid_file})"'])
        await vm.wait_holders(vip, ["lvs2"])
        await asyncio.sleep(2.0)
        restarted = time.time()
        # What shoal's keepalived state runs to start it (the reload script of the state).
        await lab.exec("lvs1", list(reload_argv()))
        await vm.wait_holders(vip, ["lvs1"])
        await asyncio.sleep(2.0)
    finally:
        await lab.exec("client1", ["touch", until])
    attempts = [(float(t), w) for t, w in json.loads((await probe).stdout)["attempts"]]
    ended = attempts[-1][0] + 1
    assert all(w is not None for t, w in attempts if t < stopped), attempts
    lost_over, window_over = _window(attempts, stopped, restarted)
    lost_back, window_back = _window(attempts, restarted, ended)
    print(
        f"\nkeepalived failover lvs1 -> lvs2 (keepalived stopped on lvs1): {lost_over} of the "
        f"probes every 50 ms failed, loss window {window_over:.2f} s; failback lvs2 -> lvs1 "
        f"(keepalived started again, lvs1 preempts): {lost_back} failed, loss window "
        f"{window_back:.2f} s; {len(attempts)} probes in all"
    )
    # Real servers answered on both sides of each switch, and the last second was clean.
    assert {w for t, w in attempts if stopped < t < restarted and w} <= {"web1", "web3"}
    assert all(w is not None for t, w in attempts if t > ended - 2), attempts[-30:]
    assert window_over < MAX_WINDOW and window_back < MAX_WINDOW, (window_over, window_back)
