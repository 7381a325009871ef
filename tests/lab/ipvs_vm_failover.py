"""keepalived failover between the two VM directors under client load, with its loss window
(issue 8); run by tests/lab/test_ipvs_vm_keepalived.py.

The `keepalived` backend on the session's two VM directors (`vm_dr_lab`): shoal renders
keepalived.conf for lvs1 (MASTER) and lvs2 (BACKUP) and starts keepalived on both, which
programs the real IPVS tables and runs VRRP between the VMs for the VIP. Then, while client1
opens a new connection to the VIP every 50 ms (vip_probe.py, each request given 1 s), keepalived
on lvs1 is stopped (SIGTERM through its pid file: it drops the VIP and its virtual servers and
sends a priority-0 advert), lvs2 takes the VIP over, keepalived on lvs1 is started again the way
shoal's keepalived state starts it, and lvs1 (the higher priority) takes the VIP back.

The loss window of each switch is reported: the longest run of failed probes that began after
it, from its first failed probe to the next one that got through (its resolution is the probe's
1 s timeout). The directors are emulated CPUs on a shared machine, so an isolated probe can time
out with no failover at all (the VM was not scheduled for a second); such failures are reported
with the baseline rather than asserted away, and the windows are bounded generously.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import pytest

from states.keepalived import PID_DIR, reload_argv
from tests.lab.ipvs_vm_support import (
    DIRECTORS,
    PORT,
    VmDrLab,
    cluster_toml,
    converge,
)
from tests.lab.rollout_support import explain, pending, settings_toml, write_repo

VIP_PROBE = Path(__file__).with_name("vip_probe.py")
WEIGHTS = {"web1": 1, "web2": 2}
PROBE_TIMEOUT = 1.0  # a SYN lost in a switch is resent after 1 s: that counts as lost
# VRRP with advert_int 1: a clean stop sends priority 0 (the backup takes over at once), a
# returning master preempts within a few adverts; the rest is slack for emulated CPUs.
MAX_WINDOW = 10.0
HOLD = 4.0  # seconds each director holds the VIP under load before the next switch
SWITCH_TIMEOUT = 60.0  # seconds for the VIP to move, as seen over SSH to the VMs

Attempts = list[tuple[float, str | None]]


def loss_window(attempts: Attempts, start: float, end: float) -> tuple[int, float]:
    """Failed probes begun in [start, end), and the longest run of failures begun there: from
    its first failed probe to the next probe that got through (to the last probe's timeout when
    none did)."""
    lost, longest, run_start = 0, 0.0, None
    for t, who in attempts:
        if t < start:
            continue
        if who is None and t < end:
            lost += 1
            run_start = t if run_start is None else run_start
        elif who is not None and run_start is not None:
            longest, run_start = max(longest, t - run_start), None
        elif t >= end and run_start is None:
            break
    if run_start is not None:
        longest = max(longest, attempts[-1][0] + PROBE_TIMEOUT - run_start)
    return lost, longest


async def _ipvs_ready(vm: VmDrLab, vip: str) -> None:
    """Both directors' keepalived have programmed the service and both real servers."""
    lab = vm.lab
    want = [f"-A -t {vip}:{PORT} -s wlc"] + [
        f"-a -t {vip}:{PORT} -r {lab.hosts[h].address}:{PORT} -g -w {w}" for h, w in WEIGHTS.items()
    ]
    give_up = time.monotonic() + SWITCH_TIMEOUT
    for host in DIRECTORS:
        while True:
            save = await vm.ipvs_save(host)
            missing = [line for line in want if line not in save]
            if not missing:
                break
            if time.monotonic() > give_up:
                pytest.fail(f"{host}: keepalived did not program {missing}: {save}")
            await asyncio.sleep(0.5)


async def failover_reports_loss_window(vm: VmDrLab) -> None:
    """The scenario of the module docstring, on the keepalived cluster the test before left."""
    lab = vm.lab
    vip = vm.vip(100)
    await vm.use_backend("keepalived")
    desired = write_repo(
        lab,
        vm.workdir / f"failover-{secrets.token_hex(3)}",
        cluster_toml("keepalived", {"http": vip}, WEIGHTS),
        # Traffic through these VMs is what this test measures itself, under load.
        settings_toml(),
    )
    result, after = await converge(lab, desired)
    assert result is None or result.ok, explain(result)
    assert after.empty, pending(after)
    await vm.wait_holders(vip, ["lvs1"], SWITCH_TIMEOUT)
    await _ipvs_ready(vm, vip)

    until = f"/tmp/shoal-vm-failover-{secrets.token_hex(3)}"
    argv = ["python3", "-", "--vip", vip, "--port", str(PORT), "--until", until,
            "--duration", "240", "--timeout", str(PROBE_TIMEOUT)]  # fmt: skip
    probe = asyncio.ensure_future(
        lab.exec("client1", argv, input=VIP_PROBE.read_text(), timeout=300)
    )
    try:
        await asyncio.sleep(HOLD)
        stopped = time.time()
        await lab.exec("lvs1", ["sh", "-c", f'kill "$(cat {PID_DIR}/keepalived.pid)"'])
        await vm.wait_holders(vip, ["lvs2"], SWITCH_TIMEOUT)
        taken = time.time()
        await asyncio.sleep(HOLD)
        restarted = time.time()
        # What shoal's keepalived state runs to start a daemon that is not running.
        await lab.exec("lvs1", list(reload_argv()))
        await vm.wait_holders(vip, ["lvs1"], SWITCH_TIMEOUT)
        back = time.time()
        await asyncio.sleep(HOLD)
    finally:
        await lab.exec("client1", ["touch", until])
        out = await probe
        await lab.exec("client1", ["rm", "-f", until])
    attempts: Attempts = [(float(t), w) for t, w in json.loads(out.stdout)["attempts"]]
    end = attempts[-1][0] + PROBE_TIMEOUT
    baseline = [w for t, w in attempts if t < stopped]
    lost_over, window_over = loss_window(attempts, stopped, restarted)
    lost_back, window_back = loss_window(attempts, restarted, end)
    print(
        f"\nkeepalived failover lvs1 -> lvs2 (keepalived stopped on lvs1; VIP seen on lvs2 "
        f"{taken - stopped:.1f} s later over SSH): {lost_over} probes failed, loss window "
        f"{window_over:.2f} s; failback lvs2 -> lvs1 (keepalived started again, lvs1 preempts; "
        f"seen {back - restarted:.1f} s later): {lost_back} probes failed, loss window "
        f"{window_back:.2f} s; baseline before the stop: {baseline.count(None)} of "
        f"{len(baseline)} failed; {len(attempts)} probes, one every 50 ms, {PROBE_TIMEOUT} s each"
    )
    servers = set(WEIGHTS)
    # Traffic went through lvs1 before, through lvs2 alone while lvs1's keepalived was down
    # (it had removed its virtual servers and VIP), and through lvs1 again after.
    for label, lo, hi in (("lvs1", 0.0, stopped), ("lvs2", taken, restarted), ("lvs1", back, end)):
        answered = {w for t, w in attempts if lo <= t < hi and w is not None}
        assert answered and answered <= servers, (label, answered, attempts)
    assert window_over < MAX_WINDOW and window_back < MAX_WINDOW, (window_over, window_back)
