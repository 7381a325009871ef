"""A real IPVS director in the lab: a qemu VM booting Debian's kernel (lab/vm.py), on the bridge.

The session brings up its own small lab (web1, web2, client1) and boots one VM director, lvs1,
in it once; every test here uses that pair. The VM is reached only over SSH, with strict host
key checking, like any other lab host. Boot time and this module's total time are printed
(`pytest -s` or the `-rA` summary shows them).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from lab import Lab, Topology
from lab.httpd import run_load, start_services
from lab.vm import VmHost, VmSpec, vm_host
from reconciler.desired.models import Host, Inventory
from reconciler.facts.gather import gather_facts
from reconciler.transport.ssh import SSHTransport
from tests.conftest import SESSION_TOKEN
from tests.lab.ipvs_vm_support import require_vm

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

# On by default (about 15 s: one boot under CPU emulation). SHOAL_VM_TESTS=0 leaves the module
# out; that is a collection-time skip, so it never counts as a skipped lab test under CI=true.
if os.environ.get("SHOAL_VM_TESTS", "1") == "0":
    pytest.skip("SHOAL_VM_TESTS=0: VM director tests left out", allow_module_level=True)

VM_NAME = "lvs1"
VM_OCTET = 11


@dataclass
class VmLab:
    lab: Lab
    vm: VmHost
    started: float

    def address(self, octet: int) -> str:
        return str(ipaddress.IPv4Network(self.lab.subnet)[octet])


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vm_lab() -> AsyncIterator[VmLab]:
    require_vm()
    started = time.monotonic()
    topology = Topology.build(directors=0, real_servers=2, clients=1)
    async with (
        Lab.up(f"v{SESSION_TOKEN}", topology, ephemeral=True) as lab,
        vm_host(lab, VmSpec(VM_NAME, VM_OCTET)) as vm,
    ):
        print(f"\nVM director {vm.name} booted to SSH in {vm.boot_seconds:.1f} s")
        yield VmLab(lab, vm, started)
        print(f"\nVM director tests: {time.monotonic() - started:.1f} s in all")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vm_transport(vm_lab: VmLab) -> AsyncIterator[SSHTransport]:
    lab, vm = vm_lab.lab, vm_lab.vm
    hosts = {n: Host(name=n, address=h.address) for n, h in lab.hosts.items()}
    hosts[vm.name] = Host(name=vm.name, address=vm.address)
    # Key exchange under CPU emulation takes about a second: allow for a slow machine.
    async with SSHTransport(
        Inventory(hosts=hosts), vm.known_hosts_path, vm.client_key_path, connect_timeout=30
    ) as transport:
        yield transport


async def test_vm_is_a_host_of_its_own(vm_lab: VmLab, tmp_path: Path) -> None:
    vm = vm_lab.vm
    assert vm.running()
    assert vm.boot_seconds > 0
    script = "hostname; uname -r; ip -o -4 addr show dev eth0; cat /sys/class/net/eth0/address;"
    script += " echo guest-only >/etc/shoal-vm-probe && cat /etc/shoal-vm-probe;"
    script += " nproc; awk '/^MemTotal:/ { print $2 }' /proc/meminfo"
    out = (await vm.exec(["sh", "-c", script])).stdout.splitlines()
    assert out[0] == vm.name
    # Debian's kernel, with its modules where modprobe looks for them.
    assert out[1].endswith("-amd64")
    assert f" {vm.address}/24 " in out[2]
    assert out[3] == vm.mac
    assert out[4] == "guest-only"
    # The default size: 1 CPU, 512 MiB (less what the kernel keeps for itself).
    assert int(out[5]) == vm.spec.cpus == 1
    assert 384 * 1024 < int(out[6]) <= vm.spec.memory_mib * 1024 == 512 * 1024
    # The lab's IPv6 too: its ULA address, reachable from a namespace host over the bridge.
    addr6 = (await vm.exec(["ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global"]))
    assert f" {vm.address6}/64 " in addr6.stdout
    ping = await vm_lab.lab.exec(
        "client1", ["ping", "-6", "-n", "-c", "1", "-w", "30", vm.address6], check=False
    )
    assert ping.returncode == 0, ping.stdout
    # The guest writes into its own overlay: the machine's /etc is untouched.
    assert not Path("/etc/shoal-vm-probe").exists()
    # A controller's inventory lists it next to the lab's namespace hosts.
    inventory = tomllib.loads(vm.inventory_toml())["hosts"]
    assert inventory[vm.name] == {
        "address": vm.address,
        "address6": vm.address6,
        "interface": "eth0",
    }
    assert set(inventory) == {*vm_lab.lab.hosts, vm.name}

    # Strict host key checking: a known_hosts that pins another key for the address is refused.
    other = vm_lab.lab.known_hosts_text().splitlines()[0].split()
    forged = tmp_path / "known_hosts"
    forged.write_text(f"{vm.address} {other[1]} {other[2]}\n")
    argv = vm.ssh_argv(["true"])
    argv[argv.index(f"UserKnownHostsFile={vm.known_hosts_path}")] = f"UserKnownHostsFile={forged}"
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 255
    assert b"Host key verification failed" in err


async def test_ipvsadm_works_in_the_vm(vm_lab: VmLab, vm_transport: SSHTransport) -> None:
    vip = vm_lab.address(150)
    rip = vm_lab.lab.hosts["web1"].address
    script = f"""set -e
modprobe ip_vs
grep -q '^ip_vs ' /proc/modules && echo loaded
ipvsadm -A -t {vip}:8080 -s rr
ipvsadm -a -t {vip}:8080 -r {rip}:8080 -g -w 3
ipvsadm -Sn
ipvsadm -D -t {vip}:8080
"""
    result = await vm_transport.run_script(VM_NAME, script)
    result.check()
    lines = result.stdout.splitlines()
    assert lines[0] == "loaded"
    assert f"-A -t {vip}:8080 -s rr" in lines
    assert f"-a -t {vip}:8080 -r {rip}:8080 -g -w 3" in lines
    after = await vm_transport.run(VM_NAME, ("ipvsadm", "-Sn"), check=True)
    assert f"{vip}:8080" not in after.stdout


async def test_facts_read_the_live_ipvs_table(vm_lab: VmLab, vm_transport: SSHTransport) -> None:
    vip = vm_lab.address(151)
    web1, web2 = (vm_lab.lab.hosts[h].address for h in ("web1", "web2"))
    setup = f"""set -e
modprobe ip_vs
ipvsadm -A -t {vip}:80 -s wlc
ipvsadm -a -t {vip}:80 -r {web1}:80 -g -w 1
ipvsadm -a -t {vip}:80 -r {web2}:80 -g -w 2
"""
    (await vm_transport.run_script(VM_NAME, setup)).check()
    try:
        facts = (await gather_facts(vm_transport, [VM_NAME]))[VM_NAME]
    finally:
        await vm_transport.run(VM_NAME, ("ipvsadm", "-D", "-t", f"{vip}:80"), check=True)
    assert facts.hostname.value == VM_NAME
    assert facts.ipvs.known, facts.ipvs.unknown_reason
    table = facts.ipvs.value
    assert table is not None
    assert table.available and table.loaded
    services = {s.key: s for s in table.services}
    assert services[("tcp", vip, 80, 0)].scheduler == "wlc"
    dests = {(d.address, d.forward, d.weight) for d in table.destinations if d.service_port == 80}
    assert dests == {(web1, "route", 1), (web2, "route", 2)}


async def _nft_counters(lab: Lab, host: str, table: str) -> dict[str, int]:
    """Packet counters of the rules of `table` (netdev family), by rule comment."""
    out = (await lab.exec(host, ["nft", "-j", "list", "table", "netdev", table])).stdout
    counters: dict[str, int] = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        packets = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        counters[rule["comment"]] = packets
    return counters


async def test_dr_traffic_through_the_vm_director(
    vm_lab: VmLab, vm_transport: SSHTransport
) -> None:
    lab, vm = vm_lab.lab, vm_lab.vm
    vip = vm_lab.address(100)
    servers = ("web1", "web2")
    # Real servers: the VIP on lo, never answered or announced in ARP (the sysctl method).
    rs_script = f"""set -e
sysctl -q -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
sysctl -q -w net.ipv4.conf.eth0.arp_ignore=1 net.ipv4.conf.eth0.arp_announce=2
ip addr replace {vip}/32 dev lo
"""
    for rs in servers:
        await lab.exec(rs, ["sh", "-c", rs_script])
    await start_services(lab, [80], hosts=servers)
    director = f"""set -e
modprobe ip_vs
ip addr replace {vip}/32 dev eth0
ipvsadm -A -t {vip}:80 -s rr
""" + "".join(f"ipvsadm -a -t {vip}:80 -r {lab.hosts[rs].address}:80 -g -w 1\n" for rs in servers)
    (await vm_transport.run_script(VM_NAME, director)).check()

    # On the client, count the VIP's answers by the MAC they arrive from: in DR the real
    # servers answer the client directly, so nothing from the VIP comes from the director.
    rules = "".join(
        f'    ether saddr {mac} ip saddr {vip} counter comment "{name}"\n'
        for name, mac in [(rs, lab.hosts[rs].mac) for rs in servers] + [("director", vm.mac)]
    )
    table = f"""table netdev shoal_vmtest {{
  chain ingress {{
    type filter hook ingress device eth0 priority 0; policy accept;
{rules}  }}
}}
"""
    await lab.exec("client1", ["nft", "-f", "-"], input=table)
    try:
        result = await run_load(lab, "client1", vip, 80, count=20, timeout=5.0, deadline=60.0)
        counters = await _nft_counters(lab, "client1", "shoal_vmtest")
        neighbour = (await lab.exec("client1", ["ip", "neigh", "show", vip])).stdout
        conns = await vm_transport.run(VM_NAME, ("ipvsadm", "-Lnc"), check=True)
    finally:
        await lab.exec("client1", ["nft", "delete", "table", "netdev", "shoal_vmtest"])
        await vm_transport.run(VM_NAME, ("ipvsadm", "-D", "-t", f"{vip}:80"))
        await vm_transport.run(VM_NAME, ("ip", "addr", "del", f"{vip}/32", "dev", "eth0"))
    assert result["failed"] == 0, result
    assert result["answered_by"] == {"web1": 10, "web2": 10}, result
    # The client sends to the VIP through the director (its ARP answer)...
    assert f"lladdr {vm.mac}" in neighbour
    # ...every answer comes straight from a real server...
    assert counters["web1"] > 0 and counters["web2"] > 0, counters
    assert counters["director"] == 0, counters
    # ...and the director did schedule them (its connection table, routed to both).
    for rs in servers:
        assert lab.hosts[rs].address in conns.stdout
