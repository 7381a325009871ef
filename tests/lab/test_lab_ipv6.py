"""The lab's IPv6: every host has its address in the lab's ULA /64, hosts reach each other over
it (Neighbour Solicitations flooded by the bridge), and none of it reaches the machine: the
bridge and its ports carry no IPv6 address, the machine has no route or neighbour into the /64,
and its IPv6 stack on the bridge delivered and sent nothing."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

import pytest

from lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]


def machine(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def bridge_ipv6_counters(bridge: str) -> dict[str, int]:
    rows = Path(f"/proc/net/dev_snmp6/{bridge}").read_text().split("\n")
    return {k: int(v) for k, v in (row.split() for row in rows if row.strip())}


async def test_every_host_has_its_ula_address_and_a_static_ipv6_setup(lab: Lab) -> None:
    net = ipaddress.IPv6Network(lab.subnet6)
    assert net.prefixlen == 64 and net.subnet_of(ipaddress.IPv6Network("fd77:77:77::/48"))
    for name, h in lab.hosts.items():
        assert h.address6 == str(net.network_address + int(h.address.rsplit(".", 1)[1], 16))
        links = json.loads(
            (await lab.exec(name, ["ip", "-j", "-6", "addr", "show", "dev", "eth0"])).stdout
        )
        globals_ = [a for a in links[0]["addr_info"] if a.get("scope") == "global"]
        assert [(a["local"], a["prefixlen"]) for a in globals_] == [(h.address6, 64)]
        assert not globals_[0].get("tentative") and not globals_[0].get("dadfailed")
        sysctls = await lab.exec(
            name,
            ["sysctl", "-n", "net.ipv6.conf.eth0.accept_ra", "net.ipv6.conf.all.forwarding"],
        )
        assert sysctls.stdout.split() == ["0", "0"]
        # No way out of the /64: no default route, nothing but the lab's prefix and link-local.
        routes = json.loads((await lab.exec(name, ["ip", "-j", "-6", "route", "show"])).stdout)
        assert {r["dst"] for r in routes} <= {lab.subnet6, "fe80::/64"}


async def test_hosts_reach_each_other_over_ipv6_and_the_machine_takes_no_part(lab: Lab) -> None:
    bridge = lab.bridge
    before = bridge_ipv6_counters(bridge)
    pairs = [("client1", "web1"), ("client1", "lvs1"), ("web2", "lvs2"), ("lvs1", "web3")]
    for src, dst in pairs:
        # An empty neighbour cache: the ping needs a Neighbour Solicitation to the solicited-node
        # group to be answered, which only works while the bridge floods it (no snooping).
        await lab.exec(src, ["ip", "-6", "neigh", "flush", "dev", "eth0"])
        ping = await lab.exec(
            src, ["ping", "-6", "-n", "-c", "1", "-w", "10", lab.hosts[dst].address6], check=False
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        neigh = json.loads(
            (
                await lab.exec(src, ["ip", "-j", "-6", "neigh", "show", lab.hosts[dst].address6])
            ).stdout
        )
        assert [n["lladdr"] for n in neigh] == [lab.hosts[dst].mac]

    # The bridge floods multicast and bridges IPv6 while its own IPv6 and its ports' are off.
    assert Path(f"/sys/class/net/{bridge}/bridge/multicast_snooping").read_text().strip() == "0"
    ports = [h.veth for h in lab.hosts.values()]
    for dev in (bridge, *ports):
        assert Path(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6").read_text().strip() == "1"
        links = json.loads(machine(["ip", "-j", "-6", "addr", "show", "dev", dev]))
        assert not [a for link in links for a in link.get("addr_info", [])]
    # The machine routes nothing of the /64 to the lab and knows no neighbour in it.
    lab_devs = {bridge, *ports}
    for h in lab.hosts.values():
        got = subprocess.run(
            ["ip", "-j", "-6", "route", "get", h.address6], capture_output=True, text=True
        )
        if got.returncode == 0:
            assert {r.get("dev") for r in json.loads(got.stdout)}.isdisjoint(lab_devs)
    neighbours = json.loads(machine(["ip", "-j", "-6", "neigh", "show"]))
    assert not [
        n
        for n in neighbours
        if ipaddress.ip_address(n["dst"]) in ipaddress.IPv6Network(lab.subnet6)
    ]
    assert not [n for n in neighbours if n.get("dev") in lab_devs]
    # What did reach the bridge's own IPv6 stack (flooded multicast) was dropped there unread,
    # and the machine sent no IPv6 packet into the lab.
    after = bridge_ipv6_counters(bridge)
    assert after["Ip6InReceives"] > before["Ip6InReceives"]
    assert after["Ip6InDelivers"] == 0
    assert after["Ip6OutRequests"] == 0
    assert after["Ip6InReceives"] == after["Ip6InDiscards"]
