"""Connection sync across a keepalived failover and failback, on the VM directors (issue 18).

The keepalived cluster with `[cluster.sync] enabled`: 20 long-lived TCP connections from
client1 through the VIP (tests/lab/long_conns.py: one byte every 100 ms, each byte acknowledged
straight from the real server) stay up while keepalived on lvs1 is stopped (lvs2 takes the VIP
with the connection entries lvs1's sync daemon sent it) and started again (lvs1 listens as
backup for preempt_delay seconds, receiving lvs2's entries, then takes the VIP back): no reset,
no stall over 3 s, and each request is finally answered. With sync off, the same failover
leaves lvs2 without the entries, and IPVS drops the connections' packets: the test shows them
stalled or reset.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from states.keepalived import PID_DIR, reload_argv
from tests.lab.ipvs_vm_support import (
    DIRECTORS,
    PORT,
    VM_TEST_MARKS,
    VmDrLab,
    cluster_toml,
    converge,
    skip_module_unless_wanted,
)
from tests.lab.rollout_support import explain, pending, settings_toml

skip_module_unless_wanted()
pytestmark = VM_TEST_MARKS

LONG_CONNS = Path(__file__).with_name("long_conns.py")
WEIGHTS = {"web1": 1, "web2": 2}
CONNECTIONS = 20
STALL = 3.0  # seconds of unacknowledged bytes that count as a stalled connection
PREEMPT_DELAY = 10  # seconds lvs1 listens as backup after its restart
HOLD = 3.0
SWITCH_TIMEOUT = 60.0
SYNC = f"\n[cluster.sync]\nenabled = true\nsync_id = 9\npreempt_delay = {PREEMPT_DELAY}\n"


async def _converged(vm: VmDrLab, sync: bool) -> str:
    vip = vm.vip(100)
    cluster = cluster_toml("keepalived", {"http": vip}, WEIGHTS)
    if sync:
        cluster = cluster.replace('arp_method = "sysctl"\n', 'arp_method = "sysctl"\n' + SYNC, 1)
    desired = vm.write_repo(vm.workdir / f"sync-{sync}-{secrets.token_hex(3)}", cluster,
                            settings_toml())  # fmt: skip
    result, after = await converge(vm.lab, desired)
    assert result is None or result.ok, explain(result)
    assert after.empty, pending(after)
    conf = (await vm.lab.exec("lvs1", ["cat", "/etc/keepalived/keepalived.conf"])).stdout
    assert ("lvs_sync_daemon eth0 VI_web id 9" in conf) == sync, conf
    await vm.wait_holders(vip, ["lvs1"], SWITCH_TIMEOUT + PREEMPT_DELAY)
    want = [f"-a -t {vip}:{PORT} -r {vm.lab.hosts[h].address}:{PORT} -g -w {w}"
            for h, w in WEIGHTS.items()]  # fmt: skip
    give_up = time.monotonic() + SWITCH_TIMEOUT
    for host in DIRECTORS:
        while missing := [ln for ln in want if ln not in await vm.ipvs_save(host)]:
            assert time.monotonic() < give_up, f"{host}: keepalived did not program {missing}"
            await asyncio.sleep(0.5)
    return vip


async def _established(vm: VmDrLab, host: str) -> int:
    return str((await vm.lab.exec(host, ["ipvsadm", "-Lnc"])).stdout).count("ESTABLISHED")


async def _through_failover(vm: VmDrLab, vip: str, failback: bool) -> dict[str, Any]:
    """The long-lived connections while lvs1's keepalived stops (and, with `failback`, starts
    again and takes the VIP back); what each connection saw."""
    lab = vm.lab
    until = f"/tmp/shoal-long-conns-{secrets.token_hex(3)}"
    argv = ["python3", "-", "--vip", vip, "--port", str(PORT), "--count", str(CONNECTIONS),
            "--until", until, "--duration", "240"]  # fmt: skip
    client = asyncio.ensure_future(lab.exec("client1", argv, input=LONG_CONNS.read_text(),
                                            timeout=300))  # fmt: skip
    events: dict[str, float] = {"start": time.time()}
    try:
        # Past the kernel's first sync threshold (the 3rd packet) and a few refreshes.
        await asyncio.sleep(HOLD)
        events["daemons"] = time.time()
        for host in DIRECTORS:
            daemons = (await lab.exec(host, ["ipvsadm", "-L", "--daemon"])).stdout.strip()
            print(f"{host} sync daemons: {daemons or 'none'}")
        # With sync, fail over once lvs2 has every connection (the kernel sends a connection's
        # state at its 3rd packet, then every 50): a failover before that loses it by design.
        give_up = time.monotonic() + SWITCH_TIMEOUT
        while failback and await _established(vm, "lvs2") < CONNECTIONS:
            assert time.monotonic() < give_up, "lvs2 never learnt the connections from lvs1"
            await asyncio.sleep(0.5)
        events["stop lvs1"] = time.time()
        await lab.exec("lvs1", ["sh", "-c", f'kill "$(cat {PID_DIR}/keepalived.pid)"'])
        await vm.wait_holders(vip, ["lvs2"], SWITCH_TIMEOUT)
        events["lvs2 holds"] = time.time()
        print(f"lvs2 knows {await _established(vm, 'lvs2')} established connections after the "
              "failover")
        await asyncio.sleep(HOLD)
        if failback:
            events["start lvs1"] = time.time()
            await lab.exec("lvs1", list(reload_argv()))
            await vm.wait_holders(vip, ["lvs1"], SWITCH_TIMEOUT + PREEMPT_DELAY)
            events["lvs1 holds"] = time.time()
            await asyncio.sleep(HOLD)
    finally:
        await lab.exec("client1", ["touch", until])
        out = await client
        await lab.exec("client1", ["rm", "-f", until])
        if not failback:
            await lab.exec("lvs1", list(reload_argv()))
            await vm.wait_holders(vip, ["lvs1"], SWITCH_TIMEOUT + PREEMPT_DELAY)
    result: dict[str, Any] = json.loads(str(out.stdout))
    resets = sorted(c["reset_at"] for c in result["connections"] if c["reset_at"] is not None)
    base = events["start"]
    print("events: " + ", ".join(f"{k} +{t - base:.1f} s" for k, t in events.items())
          + (f"; resets from +{resets[0] - base:.1f} s to +{resets[-1] - base:.1f} s"
             if resets else "; no reset"))  # fmt: skip
    return result


@pytest.mark.timeout(900)
async def test_connections_survive_failover_and_failback_only_with_sync(
    vm_dr_lab: VmDrLab,
) -> None:
    await vm_dr_lab.use_backend("keepalived")
    vip = await _converged(vm_dr_lab, sync=True)
    kept = await _through_failover(vm_dr_lab, vip, failback=True)
    conns = kept["connections"]
    print(f"\nwith sync: {len(conns)} connections, longest stall "
          f"{max(c['stall'] for c in conns):.2f} s, resets "
          f"{sum(c['reset'] is not None for c in conns)}, answered by "
          f"{sorted({str(c['server']) for c in conns})}")  # fmt: skip
    assert len(conns) == CONNECTIONS
    assert [c for c in conns if c["reset"] is not None or c["stall"] > STALL] == [], conns
    assert {c["server"] for c in conns} <= set(WEIGHTS), conns

    vip = await _converged(vm_dr_lab, sync=False)
    # keepalived leaves the kernel's sync daemons running when a reload drops lvs_sync_daemon
    # (noted for issue 18): the test stops them itself so that "off" means off.
    for host in DIRECTORS:
        await vm_dr_lab.lab.exec(host, ["sh", "-c", "ipvsadm --stop-daemon master; "
                                        "ipvsadm --stop-daemon backup; true"])  # fmt: skip
    lost = await _through_failover(vm_dr_lab, vip, failback=False)
    broken = [c for c in lost["connections"] if c["reset"] is not None or c["stall"] > STALL]
    print(f"without sync: {len(broken)} of {len(lost['connections'])} connections stalled over "
          f"{STALL} s or reset by the failover")  # fmt: skip
    assert broken, lost
