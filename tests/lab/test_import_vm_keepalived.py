"""Adopting a keepalived cluster built by hand on the two VM directors (issue 17).

lvs1 and lvs2 (the session's VM directors, real IPVS) get a keepalived.conf written by hand the
way an operator writes one: two virtual servers (TCP 80 on VIP .100 with a TCP_CHECK, UDP 53 on
VIP .101 with persistence), VRRP between the two (lvs1 MASTER), old keyword names, defaults left
out, comments; keepalived started by hand (`keepalived -f ...`, its own /run/keepalived.pid).
web1-web3 carry the VIPs by hand with method 1 (arptables, the `-s` form) and no boot file.

Then, with the `shoal` commands themselves:
- `shoal import --keepalived-conf lvs1=... --keepalived-conf lvs2=... --from-hosts` names the
  safety corrections: the IPVS drain sysctls left off on both directors and the missing boot
  persistence of web1-web3;
- `shoal plan`: the runtime steps are exactly those corrections (the two drain sysctls per
  director; the rest is the boot form and the ledger): keepalived.conf is in sync by meaning, so
  it is neither rewritten nor reloaded. Decision (README, "Importing a running cluster"): shoal
  keeps setting the drain sysctls and writing its own boot form, so the test asserts the plan is
  exactly the named corrections rather than hand-building shoal's own boot form;
- after applying them `shoal plan` is empty (exit 0), and nothing is shoal's on the directors;
- `adopt = true` on the cluster: the next plan changes nothing at run time and records the
  real servers and VIPs in the ledgers;
- web3 leaves the repository: under client load through VIP .100, each director drains web3
  (keepalived drain config, connection counters) and removes it, then web3 loses both VIPs and
  their arptables rules; no request fails.

Cost (one module, the session's one VM pair): 155 s in all with the VM boot (16 s) on the
shared 2-core machine; 364 s at a load average of 20 (facts round trips and applies through the
emulated VMs dominate; the loaded removal itself runs 20-110 s, 4000-10000 requests, 0 failed).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from lab.httpd import run_load
from reconciler.apply.executor import apply_plan
from reconciler.apply.runresult import RunResult
from reconciler.desired.loader import load_repository
from reconciler.plan.steps import Plan
from tests.lab.ipvs_vm_support import (
    DIRECTORS,
    PORT,
    VM_TEST_MARKS,
    VmDrLab,
    converge,
    skip_module_unless_wanted,
    transport_for,
)
from tests.lab.rollout_support import (
    assert_lossless,
    explain,
    pending,
    plan_and_facts,
    plan_for,
    settings_toml,
    under_load,
    write_repo,
)

pytestmark = VM_TEST_MARKS
skip_module_unless_wanted()

SERVERS = ("web1", "web2", "web3")
RUNTIME = {"arp", "addr", "sysctl", "iptables", "nft", "ipvs", "keepalived"}
DRAIN_KEYS = ("net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.expire_quiescent_template")
# Method 1 by hand ($1 VIP, $2 the real server's address), the corrected `-s` form.
METHOD1 = (
    'arptables -A INPUT -d "$1" -j DROP && '
    'arptables -A OUTPUT -s "$1" -j mangle --mangle-ip-s "$2" && ip addr add "$1" dev eth0'
)
# Undone on a real server at the end ($1 VIP, $2 address), whatever is left of it.
UNDO_METHOD1 = (
    'while arptables -D INPUT -d "$1" -j DROP 2>/dev/null; do :; done; '
    'while arptables -D OUTPUT -s "$1" -j mangle --mangle-ip-s "$2" 2>/dev/null; do :; done; '
    'ip addr del "$1/32" dev eth0 2>/dev/null; true'
)
SHOAL_FILES = ("/var/lib/shoal", "/usr/local/sbin/shoal-restore",
               "/etc/systemd/system/shoal-restore.service",
               "/etc/systemd/system/multi-user.target.wants/shoal-restore.service",
               "/etc/sysctl.d/90-shoal-lvs-dr.conf")  # fmt: skip
# The hand-started keepalived (its default pid file) and the drain sysctls back to the kernel's
# default, so the other VM modules start from directors as reset_directors leaves them.
STOP_HAND_KEEPALIVED = (
    "p=$(cat /run/keepalived.pid 2>/dev/null) && kill \"$p\" 2>/dev/null; i=0; "
    'while [ -n "${p:-}" ] && kill -0 "$p" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; '
    "i=$((i + 1)); done; sysctl -qw net.ipv4.vs.expire_nodest_conn=0 "
    "net.ipv4.vs.expire_quiescent_template=0 2>/dev/null; true"
)


def hand_conf(vm: VmDrLab, director: str) -> str:
    """keepalived.conf as an operator writes it for `director`."""
    lab = vm.lab
    master = director == "lvs1"
    web, dns = vm.vip(100), vm.vip(101)
    tcp = "".join(f"""
    real_server {lab.hosts[h].address} {PORT} {{
        TCP_CHECK {{
            connect_timeout 3
        }}
    }}""" for h in SERVERS)
    udp = "".join(f"""
    real_server {lab.hosts[h].address} 53 {{
        weight 1
    }}""" for h in SERVERS)
    return f"""! Configuration File for keepalived ({director}), written by hand
global_defs {{
   router_id {director}
}}

vrrp_instance VI_web {{
    state {"MASTER" if master else "BACKUP"}
    interface eth0
    virtual_router_id 51
    priority {150 if master else 100}
    virtual_ipaddress {{
        {web}
        {dns}
    }}
}}

# the web site (protocol written out: without it keepalived 2.2.7 made this one UDP too)
virtual_server {web} {PORT} {{
    delay_loop 2
    lb_algo wlc
    lb_kind DR
    protocol TCP{tcp}
}}

# DNS, sticky for ten minutes
virtual_server {dns} 53 {{
    delay_loop 2
    lvs_sched rr
    lvs_method DR
    persistence_timeout 600
    protocol UDP{udp}
}}
"""


async def shoal(*argv: str) -> tuple[int, str]:
    """Run this environment's `shoal` command: exit status and stdout (+ stderr on failure)."""
    exe = str(Path(sys.executable).with_name("shoal"))
    proc = await asyncio.create_subprocess_exec(exe, *argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    text = out.decode()
    if proc.returncode not in (0, 2):
        text += err.decode()
    return proc.returncode or 0, text


def runtime(plan: Plan) -> dict[str, list[str]]:
    out = {h: [s.description for s in hp.steps if s.subsystem in RUNTIME]
           for h, hp in plan.hosts.items()}  # fmt: skip
    return {h: steps for h, steps in out.items() if steps}


async def sh(vm: VmDrLab, host: str, script: str, *args: str) -> str:
    return str((await vm.lab.exec(host, ["sh", "-c", script, "sh", *args])).stdout)


@pytest_asyncio.fixture(loop_scope="session")
async def hand_built(vm_dr_lab: VmDrLab) -> AsyncIterator[VmDrLab]:
    vm, lab = vm_dr_lab, vm_dr_lab.lab
    await vm.reset_directors()
    vips = (vm.vip(100), vm.vip(101))
    try:
        for host in SERVERS:
            for vip in vips:
                await sh(vm, host, UNDO_METHOD1, vip, lab.hosts[host].address)
                await sh(vm, host, METHOD1, vip, lab.hosts[host].address)
            await lab.exec(host, ["rm", "-rf", *SHOAL_FILES])
        for d in DIRECTORS:
            await lab.exec(d, ["sh", "-c", STOP_HAND_KEEPALIVED])
            await lab.exec(d, ["sh", "-c", "mkdir -p /etc/keepalived && cat > "
                               "/etc/keepalived/keepalived.conf"], input=hand_conf(vm, d))
            await lab.exec(d, ["keepalived", "-f", "/etc/keepalived/keepalived.conf"])
        await vm.wait_holders(vips[0], ["lvs1"], seconds=60)
        yield vm
    finally:
        for d in DIRECTORS:
            await lab.exec(d, ["sh", "-c", STOP_HAND_KEEPALIVED])
        await vm.reset_directors()
        for host in SERVERS:
            for vip in vips:
                await sh(vm, host, UNDO_METHOD1, vip, lab.hosts[host].address)
            await lab.exec(host, ["rm", "-rf", *SHOAL_FILES])


async def _settled(vm: VmDrLab) -> None:
    """Both directors' IPVS tables hold every real server (keepalived's checks passed)."""
    give_up = asyncio.get_running_loop().time() + 90
    while True:
        saves = [await vm.ipvs_save(d) for d in DIRECTORS]
        if all(s.count("-a -t") == 3 and s.count("-a -u") == 3 for s in saves):
            return
        if asyncio.get_running_loop().time() > give_up:
            pytest.fail(f"keepalived never programmed every real server: {saves}")
        await asyncio.sleep(1)


async def test_a_hand_written_keepalived_cluster_is_adopted_and_a_real_server_leaves_under_load(
    hand_built: VmDrLab, tmp_path: Path
) -> None:
    vm, lab = hand_built, hand_built.lab
    web, dns = vm.vip(100), vm.vip(101)
    await _settled(vm)
    setup = tmp_path / "setup"
    write_repo(lab, setup, None, settings_toml())
    confs = []
    for d in DIRECTORS:
        path = tmp_path / f"{d}.conf"
        path.write_text(hand_conf(vm, d))
        confs += ["--keepalived-conf", f"{d}={path}"]
    key = ["--key", str(lab.client_key_path)]

    # 1. import: the corrections are named.
    target = tmp_path / "imported"
    rc, text = await shoal("import", str(target), *confs, "--from-hosts",
                           str(setup / "inventory.toml"), "--known-hosts",
                           str(setup / "known_hosts"), *key)  # fmt: skip
    assert rc == 0, text
    print(text)
    found = sorted(tuple(ln.split(": ", 3)[1:3]) for ln in text.splitlines()
                   if ln.startswith("known-bad pattern: "))  # fmt: skip
    assert found == sorted([(d, "IPVS drain sysctls off") for d in DIRECTORS]
                           + [(h, "missing persistence across reboot") for h in SERVERS]), found

    # 2. The first plan is exactly those corrections: keepalived.conf is in sync by meaning.
    rc, text = await shoal("plan", str(target), "--json", *key)
    assert rc == 2, text
    first = Plan.model_validate(json.loads(text)["plan"])
    assert runtime(first) == {d: [f"set {k} = 1" for k in DRAIN_KEYS] for d in DIRECTORS}, (
        runtime(first))
    assert not any(hp.violations or hp.blocked for hp in first.hosts.values())
    imported = load_repository(target)
    result, after = await converge(lab, imported)
    assert result is not None and result.ok, explain(result) if result else ""
    assert after.empty, pending(after)
    rc, text = await shoal("plan", str(target), *key)
    assert rc == 0, text  # empty
    for d in DIRECTORS:
        ledger = json.loads(await sh(vm, d, "cat /var/lib/shoal/ledger.json"))
        assert "keepalived.real_server" not in ledger["entries"], ledger  # not adopted: foreign
        # Still the file written by hand: in sync by meaning, never rewritten.
        assert "written by hand" in await sh(vm, d, "cat /etc/keepalived/keepalived.conf"), d

    # 3. Adopt: nothing changes at run time, the ledgers take the hand-made objects.
    cluster_file = next((target / "clusters").glob("*.toml"))
    text = cluster_file.read_text()
    cluster_file.write_text(text.replace("[cluster]\n", "[cluster]\nadopt = true\n", 1))
    adopting = load_repository(target)
    async with transport_for(lab, adopting) as t:
        plan = await plan_for(adopting, t)
    assert runtime(plan) == {}, runtime(plan)
    result, after = await converge(lab, adopting)
    assert result is not None and result.ok, explain(result) if result else ""
    assert after.empty, pending(after)
    rip3 = lab.hosts["web3"].address
    for d in DIRECTORS:
        owned = json.loads(await sh(vm, d, "cat /var/lib/shoal/ledger.json"))["entries"]
        assert f"tcp {web}:{PORT} {rip3}:{PORT}" in owned["keepalived.real_server"], owned
    owned3 = json.loads(await sh(vm, "web3", "cat /var/lib/shoal/ledger.json"))["entries"]
    assert f"{web}/32 dev eth0" in owned3["addr.present"], owned3

    # 4. web3 leaves, under load through the web VIP: drained and removed, no request lost.
    text = cluster_file.read_text()
    block = re.compile(r'\n  \[\[service\.real_server\]\][^\n]*\n  host = "web3"\n'
                       r'  weight = \d+\n')  # fmt: skip
    assert len(block.findall(text)) == 2, text
    cluster_file.write_text(block.sub("\n", text))
    leaving = load_repository(target)
    assert all(r.host != "web3" for c in leaving.clusters.values() for s in c.services
               for r in s.real_servers)  # fmt: skip
    async with transport_for(lab, leaving) as t:
        plan, facts = await plan_and_facts(leaving, t)
        steps3 = [s.description for s in plan.hosts["web3"].steps if s.subsystem in RUNTIME]
        assert sorted(steps3) == sorted(
            [f"remove {v}/32 from eth0" for v in (web, dns)]
            + [f"remove arptables rule INPUT -d {v} -j DROP" for v in (web, dns)]
            + [f"remove arptables rule OUTPUT -s {v} -j mangle --mangle-ip-s {rip3}"
               for v in (web, dns)]), steps3  # fmt: skip

        async def change() -> tuple[RunResult, Plan]:
            applied = await apply_plan(plan, leaving, t, facts=facts)
            return applied, await plan_for(leaving, t)

        (applied, again), load = await under_load(lab, web, change, timeout=10.0)
    print(f"\nweb3 leaves under load: {load.summary()}")
    assert applied.ok, explain(applied)
    assert again.empty, pending(again)
    drains = [s.comment for s in applied.steps() if "drain" in s.comment]
    # web3 drains from both virtual servers on each director, ended by its connections.
    assert len(drains) == 2 * len(DIRECTORS), explain(applied)
    assert not any("timed out" in c for c in drains), explain(applied)
    assert_lossless(load, {"web1", "web2", "web3"})
    assert "web3" not in load.after, load.summary()
    for d in DIRECTORS:
        assert rip3 not in await vm.ipvs_save(d), d
    assert web not in await sh(vm, "web3", "ip -br addr show dev eth0")
    assert web not in await sh(vm, "web3", "arptables-save")
    rest = await run_load(lab, "client1", web, PORT, count=20)
    assert rest["failed"] == 0 and set(rest["answered_by"]) == {"web1", "web2"}, rest
