"""Verification of IPv6 services: counter matches (checked by the real nft), the traffic probe
against a real IPv6 listener on ::1, and the client's source address of the VIP's family."""

from __future__ import annotations

import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from reconciler.desired.models import (
    Cluster,
    ClusterHeader,
    Desired,
    Host,
    Inventory,
    RealServer,
    Service,
    Settings,
)
from reconciler.transport.fake import FakeTransport
from reconciler.verify.counters import CounterTable, from_vip, to_vip
from reconciler.verify.probe_traffic import probe_source
from reconciler.verify.session import Session
from reconciler.verify.traffic import Traffic

VIP6 = "fd78:1::100"
CLIENT6 = "fd78:1::31"
HTTP6 = Service(name="http6", vip=VIP6, port=80, real_servers=(RealServer(host="web1"),))


def test_ipv6_matches() -> None:
    assert to_vip(CLIENT6, HTTP6, syn_only=True) == (
        f"ip6 saddr {CLIENT6} ip6 daddr {VIP6} tcp dport 80 tcp flags & (syn | ack) == syn"
    )
    assert from_vip(CLIENT6, HTTP6) == f"ip6 saddr {VIP6} ip6 daddr {CLIENT6} tcp sport 80"
    udp = Service(name="dns6", vip=VIP6, port=53, protocol="udp")
    assert to_vip(CLIENT6, udp, syn_only=True) == (
        f"ip6 saddr {CLIENT6} ip6 daddr {VIP6} udp dport 53"
    )


def test_nft_loads_a_dual_stack_counter_table() -> None:
    """Loaded for real (not only checked) in a scratch namespace with an eth0."""
    if os.geteuid() != 0 or not shutil.which("nft"):
        pytest.skip("needs root and nft")
    tab = CounterTable("lvs1", "eth0", "shoal_verify_0a1b2c3d")
    http4 = Service(name="http", vip="10.77.0.100", port=80)
    tab.add(to_vip("10.77.0.31", http4, syn_only=True))
    tab.add(to_vip(CLIENT6, HTTP6, syn_only=True))
    tab.add(f"ether saddr 02:00:00:00:00:15 {from_vip(CLIENT6, HTTP6)}")
    script = (
        "ip link add eth0 type veth peer name eth1 && nft -f - && "
        "nft -j list counters table netdev shoal_verify_0a1b2c3d"
    )
    res = subprocess.run(["unshare", "-n", "sh", "-c", script], input=tab.ruleset(),
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert res.returncode == 0, res.stderr
    names = [o["counter"]["name"] for o in json.loads(res.stdout)["nftables"] if "counter" in o]
    assert names == ["c0", "c1", "c2"]


class _Named(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(4096)
        self.request.sendall(b"HTTP/1.0 200 OK\r\n\r\nweb6 says hello\n")


class _Server6(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True


@pytest.fixture
def listener6() -> Iterator[int]:
    try:
        server = _Server6(("::1", 0), _Named)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _probe(*args: str) -> dict[str, object]:
    res = subprocess.run([sys.executable, "-", *args], input=probe_source(), text=True,
                         capture_output=True, check=True, timeout=60)  # fmt: skip
    out: dict[str, object] = json.loads(res.stdout)
    return out


def test_probe_reaches_an_ipv6_vip_and_reads_who_answered(listener6: int) -> None:
    out = _probe("--vip", "::1", "--port", str(listener6), "--count", "6", "--http", "/",
                 "--concurrency", "2")  # fmt: skip
    assert out["ok"] == 6 and out["failed"] == 0
    assert out["answered_by"] == {"web6": 6}


def test_probe_sends_ipv6_datagrams() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sink:
        sink.bind(("::1", 0))
        sink.settimeout(10)
        port = sink.getsockname()[1]
        out = _probe("--vip", "::1", "--port", str(port), "--protocol", "udp", "--count", "2",
                     "--timeout", "0.2")  # fmt: skip
        assert out["ok"] == 2
        assert sink.recvfrom(100)[0] == b"shoal-verify\n"


def _desired(client6: bool) -> Desired:
    hosts = {
        "lvs1": Host(name="lvs1", address="10.77.0.11", address6="fd78:1::11"),
        "web1": Host(name="web1", address="10.77.0.21", address6="fd78:1::21"),
        "client1": Host(name="client1", address="10.77.0.31",
                        address6=CLIENT6 if client6 else None),
    }  # fmt: skip
    cluster = Cluster(cluster=ClusterHeader(name="web", directors=("lvs1",), director="nftables"),
                      services=(HTTP6,))  # fmt: skip
    return Desired(settings=Settings(), inventory=Inventory(hosts=hosts),
                   clusters={"web": cluster}, known_hosts="")  # fmt: skip


def test_an_ipv6_service_is_counted_from_the_clients_ipv6_address() -> None:
    tr = Traffic(Session(_desired(client6=True), FakeTransport(), None, None))
    job = tr.job("web", HTTP6, "client1", "lvs1")
    rs_table = tr.tables["web1"].ruleset()
    assert f"ip6 saddr {CLIENT6} ip6 daddr {VIP6} tcp dport 80" in rs_table
    assert job.fwd_counter is not None and job.ret_counter is not None
    assert tr.s.failures == []


async def test_a_client_without_ipv6_is_a_setup_failure_and_sends_nothing() -> None:
    transport = FakeTransport()
    tr = Traffic(Session(_desired(client6=False), transport, None, None))
    job = tr.job("web", HTTP6, "client1", "lvs1")
    assert job.rs_counters == {} and tr.tables == {}
    assert [(f.check, f.host) for f in tr.s.failures] == [("setup", "client1")]
    assert "no IPv6 address" in tr.s.failures[0].message
    (traffic,) = await tr.all_traffic([job])
    assert traffic.requests == 0 and transport.calls == []
