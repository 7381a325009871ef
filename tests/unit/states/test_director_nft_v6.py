"""The nftables DSR table with IPv6 services, against the real `nft` in a scratch namespace.

Render, load with `nft -f`, read back with `nft -j list ruleset` through the facts parser, decode:
the model must come back equal. An update keeps the flow pins of the services that stay, IPv4
and IPv6 alike. IPv4-only tables render as before (test_director_nft.py's golden file).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.facts.parsers.nft import parse_nft_ruleset
from reconciler.facts.parsers.nft_dsr import DsrTable, decode_table
from states.base import PlanContext
from states.nft_dsr_model import DsrTableArgs, table_from_args
from states.nft_dsr_render import render_replace, render_table, render_update
from states.registry import kind_of
from tests.unit.states.director_fixtures import MACS, desired, facts, plan

VIP6 = "fd78:1::100"
VIP6B = "fd78:1::101"


def _args(w1: int = 1, w2: int = 2, persistence: int = 0, v6b: bool = True) -> dict[str, Any]:
    members = [{"host": "web1", "mac": MACS["web1"], "weight": w1},
               {"host": "web2", "mac": MACS["web2"], "weight": w2}]  # fmt: skip
    services = [
        {"protocol": "tcp", "vip": "10.77.0.100", "port": 80, "members": members},
        {"protocol": "tcp", "vip": VIP6, "port": 80, "persistence": persistence,
         "members": members},
    ]  # fmt: skip
    if v6b:
        services.append({"protocol": "udp", "vip": VIP6B, "port": 53, "persistence": 600,
                         "members": [{"host": "web3", "mac": MACS["web3"], "weight": 1}]})
    return {"interface": "eth0", "director_mac": MACS["lvs1"], "services": services}


def _table(**kw: Any) -> DsrTable:
    return table_from_args(DsrTableArgs.model_validate(_args(**kw)))


class Scratch:
    """A throwaway network namespace with an eth0, for running the real `nft`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def nft(self, *argv: str, stdin: str | None = None) -> str:
        res = subprocess.run(["ip", "netns", "exec", self.name, "nft", *argv], input=stdin,
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert res.returncode == 0, f"nft {' '.join(argv)}: {res.stderr}"
        return res.stdout

    def load(self, script: str) -> None:
        self.nft("-f", "-", stdin=script)

    def read_back(self) -> DsrTable:
        ruleset = parse_nft_ruleset(self.nft("-j", "list", "ruleset"))
        table = ruleset.table("netdev", "shoal_dsr")
        assert table is not None
        return decode_table(table.canonical_json, "eth0")


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"):
        if os.environ.get("CI") == "true":
            pytest.fail("needs root, ip and nft")
        pytest.skip("needs root, ip and nft")
    name = f"sdsr6-{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name",
                        "eth1"], check=True)  # fmt: skip
        yield Scratch(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_ipv6_service_text() -> None:
    text = render_table(_table())
    svc = "svc_tcp_fd78_1__100_80"
    assert f"ip6 daddr {VIP6} tcp dport 80 goto {svc}" in text
    assert "ip daddr 10.77.0.100 tcp dport 80 goto svc_tcp_10_77_0_100_80" in text
    # The hash sees the whole address; the pins the low 96 bits (nft 1.0.6: keys <= 16 bytes).
    assert "jhash ip6 saddr . tcp sport mod 3" in text
    assert "update @flows_tcp_fd78_1__100_80 { @nh,96,96 . tcp sport : ether daddr }" in text
    assert ("map flows_tcp_fd78_1__100_80 { typeof @nh,96,96 . tcp sport : ether daddr; "
            "size 65536; timeout 300s; }") in text  # fmt: skip
    assert "jhash ip6 saddr mod 1 map" in text  # the persistent UDP service
    assert f"ether saddr set {MACS['lvs1']}" in text


@pytest.mark.parametrize("persistence", [0, 300])
def test_round_trip_through_real_nft(scratch: Scratch, persistence: int) -> None:
    want = _table(persistence=persistence)
    scratch.load(render_replace(want))
    assert scratch.read_back() == want


def test_drained_ipv6_service_round_trips(scratch: Scratch) -> None:
    want = _table(w1=0, w2=0)
    scratch.load(render_replace(want))
    got = scratch.read_back()
    assert got.services == want.services


def test_update_keeps_ipv6_flow_pins(scratch: Scratch) -> None:
    old = _table()
    scratch.load(render_replace(old))
    pin6 = "flows_tcp_fd78_1__100_80"
    pin4 = "flows_tcp_10_77_0_100_80"
    # Pins as the data path writes them: the IPv6 key is the address's low 96 bits and the port.
    scratch.nft("add", "element", "netdev", "shoal_dsr", pin6,
                "{ 0x00000000000000000000abcd . 40000 : " + MACS["web1"] + " }")  # fmt: skip
    scratch.nft("add", "element", "netdev", "shoal_dsr", pin4,
                "{ 10.77.0.50 . 40000 : " + MACS["web1"] + " }")  # fmt: skip
    new = _table(w1=0, w2=1, v6b=False)
    script = render_update(new, scratch.read_back())
    assert "delete table" not in script
    assert "delete map netdev shoal_dsr flows_udp_fd78_1__101_53" in script
    scratch.nft("-c", "-f", "-", stdin=script)
    scratch.load(script)
    assert scratch.read_back() == new
    for pin in (pin6, pin4):
        assert MACS["web1"] in scratch.nft("list", "map", "netdev", "shoal_dsr", pin)


# Sent from eth1 (the veth peer) so that it arrives on eth0's ingress hook: one IPv6 TCP SYN,
# built byte by byte; nft does not check the checksum. Arguments: eth0's MAC, source, VIP.
_SEND_SYN = """
import socket, struct, sys
dst_mac, src, vip = sys.argv[1], sys.argv[2], sys.argv[3]
tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
ip6 = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64)
ip6 += socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, vip)
eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex("020000000099") + b"\\x86\\xdd"
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth1", 0))
s.send(eth + ip6 + tcp)
"""


def test_a_real_ipv6_syn_is_pinned_by_its_low_96_bits(scratch: Scratch) -> None:
    """The data path itself: a SYN to the IPv6 VIP is hashed, pinned and forwarded."""
    for dev in ("eth0", "eth1"):
        subprocess.run(["ip", "-n", scratch.name, "link", "set", dev, "up"], check=True)
    link = subprocess.run(["ip", "-n", scratch.name, "-j", "link", "show", "eth0"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    eth0_mac = json.loads(link)[0]["address"]
    scratch.load(render_replace(_table()))
    client = "fd78:aaaa:bbbb:cccc::abcd"
    subprocess.run(["ip", "netns", "exec", scratch.name, sys.executable, "-c", _SEND_SYN,
                    eth0_mac, client, VIP6], check=True, timeout=30)  # fmt: skip
    pins = scratch.nft("list", "map", "netdev", "shoal_dsr", "flows_tcp_fd78_1__100_80")
    # The first 32 bits (fd78:aaaa) are not in the key; the port is.
    assert "0xbbbbcccc000000000000abcd . 40000 expires " in pins, pins
    assert MACS["web1"] in pins or MACS["web2"] in pins


def _dual_services() -> list[dict[str, Any]]:
    rs = [{"host": "web1", "weight": 1}, {"host": "web2", "weight": 2}]
    return [{"name": "http", "vip": "10.77.0.100", "port": 80, "real_server": rs},
            {"name": "http6", "vip": VIP6, "port": 80, "real_server": rs}]  # fmt: skip


def test_compile_dual_stack_nftables_director() -> None:
    """One table holds both families; the IPv6 VIP goes on the primary as a /128 after it."""
    d = desired("nftables", _dual_services(), dual=True)
    f = {h: facts(h) for h in ("lvs1", "lvs2", "web1", "web2")}
    lows, steps, skipped = plan(d, f)
    assert skipped == []
    vips = [(v.host, v.args["address"], v.args["prefix"], v.args["announce"], v.require)
            for v in lows if v.function == "addr.present"]  # fmt: skip
    assert vips == [("lvs1", "10.77.0.100", 32, True, ("nft-dsr",)),
                    ("lvs1", VIP6, 128, True, ("nft-dsr",))]  # fmt: skip
    script = steps[0].writes[0].content
    assert f"ip6 daddr {VIP6} tcp dport 80 goto svc_tcp_fd78_1__100_80" in script
    assert f"mod 3 map {{ 0 : {MACS['web1']}, 1-2 : {MACS['web2']} }}" in script


def test_ipv6_vip_step_adds_nodad_and_announces() -> None:
    d = desired("nftables", _dual_services(), dual=True)
    f = {h: facts(h) for h in ("lvs1", "lvs2", "web1", "web2")}
    lows, _, _ = plan(d, f)
    low = next(v for v in lows if v.function == "addr.present" and v.args["address"] == VIP6)
    result = kind_of(low.function).run(low, PlanContext(desired=d, facts=f))
    (step,) = result.steps
    assert step.commands[0] == ("ip", "addr", "add", f"{VIP6}/128", "dev", "eth0", "nodad")
    assert step.commands[1][-2:] == ("eth0", VIP6)  # the unsolicited neighbour advertisement
