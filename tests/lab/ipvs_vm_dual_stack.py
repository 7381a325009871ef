"""Dual stack on the VM directors (issue 16): one scenario per IPVS backend, run last by
test_ipvs_vm_ipvsadm.py and test_ipvs_vm_keepalived.py on the session's VMs.

From the IPv4 cluster the module's tests left (`http` on .100, web1 and web2), through shoal's
real path (config repo, facts over SSH, plan_desired, apply_plan):

1. The change to dual stack (`http6` on the lab ULA's ::100 beside `http`) fails on lvs1, the
   primary and last phase, at its ledger write, after its IPVS services (or keepalived's reload)
   and its VIPs are in: lvs1's phase rolls itself back and lvs1 is byte for byte what it was
   (`ipvsadm -Sn`, `ip -j addr` of both families, ip6tables, iptables, nft, arptables, the IPVS
   and IPv6 sysctls, shoal's files and keepalived.conf).
2. The same change applied for real: it converges and verifies (traffic to both VIPs reaches
   both real servers, the replies bypass the director, ARP and Neighbour Solicitations are
   answered by lvs1 alone), the live tables hold the `[v6]:80` services, and client1 hears
   lvs1's unsolicited Neighbour Advertisement for the IPv6 VIP.
3. A rollout: web3 joins and is then drained and removed while client1 and lvs2 solicit the
   IPv6 VIP round after round: every round is answered by exactly one MAC, lvs1's, and the
   live tables follow (`[v6]:80` real servers and weights, exactly).
4. keepalived only: its daemon on lvs1 stops, lvs2 takes both VIPs; shoal's verification then
   passes through lvs2 (traffic to every real server, replies direct, lvs2 alone answers ND)
   and every solicitation round from client1 and lvs1 names lvs2 alone; keepalived on lvs1
   starts again and takes the VIPs back.
5. Back to the IPv4 cluster, for whatever runs after.

Cost: six applies through the emulated VMs (the session's, not booted again), 1.5-3.5 minutes
per backend on 2 shared cores (90-200 s measured); the rollout runs without load.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from reconciler.apply.executor import apply_plan
from reconciler.desired.models import Desired
from reconciler.plan.compile_director import IPVS_SYSCTLS
from reconciler.verify.run import verify_desired
from states.keepalived import CONF_PATH, PID_DIR, reload_argv
from tests.lab.executor_support import raw_state
from tests.lab.ipvs_vm_inject import clear_failure, inject_failure_when
from tests.lab.ipvs_vm_scenarios import START, THREE, verified
from tests.lab.ipvs_vm_support import (
    PORT,
    SETTINGS,
    VmDrLab,
    cluster_toml,
    converge,
    transport_for,
)
from tests.lab.nd_support import listening, nd_watched, only_the_director
from tests.lab.rollout_support import (
    explain,
    pending,
    plan_and_facts,
)

MV = "/usr/bin/mv"  # what the executor's file writes end with (reconciler/apply/phase_script.py)
LEDGER = "/var/lib/shoal/ledger.json"
# Each solicitation round waits 1 s for answers, as the verification's probe does: with 0.3 s an
# emulated director on a loaded machine, busy with keepalived's reload, now and then answers
# too late (seen: 2 silent rounds of 83 from client1, never another MAC). A silent round still
# fails the test.
ND_WINDOW = 1.0
SETTLE = 60.0  # seconds for keepalived to (re)program IPVS and VRRP to place the VIPs
# The director state a rollback must give back, beside raw_state's.
_DIRECTOR_STATE = {
    "ipvs": ["ipvsadm", "-Sn"],
    "sysctl6": ["sysctl", *IPVS_SYSCTLS, "net.ipv6.conf.all.forwarding",
                "net.ipv6.conf.eth0.accept_dad", "net.ipv6.conf.eth0.ndisc_notify"],
    "keepalived": ["sh", "-c", f"cat {CONF_PATH} 2>&1"],
}  # fmt: skip


async def director_state(vm: VmDrLab, host: str) -> dict[str, str]:
    state = await raw_state(vm.lab, host)
    for name, argv in _DIRECTOR_STATE.items():
        res = await vm.lab.exec(host, argv, check=False)
        state[name] = f"rc={res.returncode}\n{res.stdout}"
    return state


def _desired(vm: VmDrLab, backend: str, weights: dict[str, int], *, dual: bool = True,
             verify: bool = False) -> Desired:  # fmt: skip
    vips = {"http": vm.vip(100)} | ({"http6": vm.vip6(100)} if dual else {})
    settings = SETTINGS if verify else SETTINGS.replace("[verify]", "[verify]\nenabled = false")
    dest = vm.workdir / f"dual-{backend}-{secrets.token_hex(3)}"
    return vm.write_repo(dest, cluster_toml(backend, vips, weights), settings)


async def _until_same(vm: VmDrLab, host: str, before: dict[str, str], seconds: float) -> None:
    """keepalived reprograms IPVS after its reload: wait for the state to come back, then
    compare every part."""
    give_up = time.monotonic() + seconds
    while (now := await director_state(vm, host)) != before and time.monotonic() < give_up:
        await asyncio.sleep(1.0)
    diff = {k: (before[k], now.get(k)) for k in before if before[k] != now.get(k)}
    assert not diff, diff


async def _rolled_back(vm: VmDrLab, backend: str) -> None:
    lab = vm.lab
    before = await director_state(vm, "lvs1")
    two = _desired(vm, backend, START)
    async with transport_for(lab, two) as t:
        plan, facts = await plan_and_facts(two, t)
        lvs1 = [s.id for s in plan.hosts["lvs1"].steps]
        ledger = next(sid for sid in lvs1 if sid.endswith("shoal-ledger/write"))
        assert lvs1.index(ledger) == len(lvs1) - 1, lvs1  # after every change on lvs1
        await inject_failure_when(lab, "lvs1", MV, f" {LEDGER}")
        try:
            result = await apply_plan(plan, two, t, facts=facts)
        finally:
            await clear_failure(lab, "lvs1", MV)
    assert not result.ok, explain(result)
    failed = [(s.host, s.id) for s in result.steps() if s.result is False]
    assert failed == [("lvs1", ledger)], explain(result)
    done = [s for s in result.steps() if s.host == "lvs1" and s.result]
    assert any(s.function == "addr.present" for s in done) or backend == "keepalived", (
        explain(result)
    )
    assert done and all(s.rolled_back for s in done), explain(result)
    assert [(r.host, r.by, r.proven) for r in result.rollbacks] == [("lvs1", "phase", True)], (
        explain(result)
    )
    await _until_same(vm, "lvs1", before, SETTLE if backend == "keepalived" else 0)


def _tables_have(save: str, vm: VmDrLab, weights: dict[str, int]) -> None:
    """The IPv6 service and exactly these real servers at these weights, as -Sn prints them."""
    vip6 = vm.vip6(100)
    assert f"-A -t [{vip6}]:{PORT} -s wlc" in save, save
    have = sorted(ln for ln in save.splitlines() if ln.startswith(f"-a -t [{vip6}]:{PORT} "))
    want = sorted(f"-a -t [{vip6}]:{PORT} -r [{vm.lab.hosts[h].address6}]:{PORT} -g -w {w}"
                  for h, w in weights.items())  # fmt: skip
    assert have == want, save


async def _ipvs_settled(vm: VmDrLab, weights: dict[str, int]) -> None:
    give_up = time.monotonic() + SETTLE
    for host in ("lvs1", "lvs2"):
        while True:
            try:
                _tables_have(await vm.ipvs_save(host), vm, weights)
                break
            except AssertionError:
                if time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.5)


async def _rollout(vm: VmDrLab, backend: str) -> list[str]:
    """web3 joins, then is drained and removed, with solicitations from client1 and lvs2 all
    along. No load: the IPv6 zero-loss join and removal are test_dual_stack_nft_lab's (the
    director's data path is the kernel's either way), and load doubles the VMs' apply time."""
    lab, vip6 = vm.lab, vm.vip6(100)
    mac = lab.hosts["lvs1"].mac.lower()
    summary = []
    for weights, joins in ((THREE, True), (START, False)):
        started = time.monotonic()
        async with nd_watched(lab, vip6, ("client1", "lvs2"), ND_WINDOW) as seen:
            ran, after = await converge(lab, _desired(vm, backend, weights))
        assert ran is not None and ran.ok, explain(ran) if ran else "nothing planned"
        assert after.empty, pending(after)
        if not joins:
            drains = {s.host for s in ran.steps() if "drain" in s.comment}
            assert drains == {"lvs1", "lvs2"}, explain(ran)
            assert not any("timed out" in s.comment for s in ran.steps()), explain(ran)
        await _ipvs_settled(vm, weights)
        summary.append(f"{'join' if joins else 'removal'} "
                       f"{time.monotonic() - started:.0f} s: ND "
                       f"{only_the_director(seen, mac, from_start=False)}")  # fmt: skip
    return summary


async def _failover(vm: VmDrLab, desired: Desired) -> str:
    """keepalived stops on lvs1: shoal's verification passes through lvs2 alone."""
    lab, vip4, vip6 = vm.lab, vm.vip(100), vm.vip6(100)
    await lab.exec("lvs1", ["sh", "-c", f'kill "$(cat {PID_DIR}/keepalived.pid)"'])
    try:
        for vip in (vip4, vip6):
            await vm.wait_holders(vip, ["lvs2"], SETTLE)
        async with nd_watched(lab, vip6, ("client1", "lvs1"), ND_WINDOW) as seen, transport_for(
            lab, desired
        ) as t:
            v = await verify_desired(desired, t)
        assert v.ok, v
        assert {s.vip for s in v.services} == {vip4, vip6}, v
        for s in v.services:
            assert s.director == "lvs2" and s.failed == 0 and s.return_packets == 0, s
            assert all((r.received or 0) > 0 for r in s.real_servers), s
        for c in v.arp:
            assert [r.host for r in c.responders] == ["lvs2"], c
        summary = only_the_director(seen, lab.hosts["lvs2"].mac.lower(), from_start=False)
    finally:
        await lab.exec("lvs1", list(reload_argv()))  # as shoal's keepalived state starts it
    for vip in (vip4, vip6):
        await vm.wait_holders(vip, ["lvs1"], SETTLE)
    return summary


async def dual_stack(vm: VmDrLab, backend: str) -> None:
    """The scenario of the module docstring, from what the module's tests before left."""
    lab = vm.lab
    await vm.use_backend(backend)
    t0 = time.monotonic()
    marks: list[str] = []

    def mark(what: str) -> None:
        marks.append(f"{what} {time.monotonic() - t0:.0f} s")

    one = _desired(vm, backend, START, dual=False)
    result, after = await converge(lab, one)
    assert result is None or result.ok, explain(result)
    assert after.empty, pending(after)
    await vm.wait_holders(vm.vip(100), ["lvs1"], SETTLE)
    await _rolled_back(vm, backend)
    mark("rolled back")

    checked = _desired(vm, backend, START, verify=True)
    async with listening(lab, vm.vip6(100)) as heard:
        result, after = await converge(lab, checked)
    # lvs1 took the IPv6 VIP and told the segment: an unsolicited advertisement to all nodes
    # (shoal's for ipvsadm, keepalived's own), besides its answers to the probes.
    announced = {str(mac) for _, mac, dst in heard["adverts"] if dst == "ff02::1"}
    assert announced == {lab.hosts["lvs1"].mac.lower()}, heard["adverts"]
    verified(result, vm, [vm.vip(100), vm.vip6(100)])
    assert after.empty, pending(after)
    await _ipvs_settled(vm, START)
    mark("converged")

    rollout = await _rollout(vm, backend)
    mark("rollout")
    failover = await _failover(vm, checked) if backend == "keepalived" else "-"
    mark("failover")

    result, after = await converge(lab, one)
    assert result is not None and result.ok, explain(result) if result else "nothing planned"
    assert after.empty, pending(after)
    assert vm.vip6(100) not in await vm.ipvs_save("lvs1")
    await vm.wait_holders(vm.vip6(100), [], SETTLE)  # the IPv6 VIP is gone from both directors
    mark("back to IPv4")
    print(f"\n{backend} dual stack: {'; '.join(marks)}\n  " + "\n  ".join(rollout)
          + f"\n  failover ND: {failover}")  # fmt: skip

