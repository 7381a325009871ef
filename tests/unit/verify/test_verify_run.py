"""The verification phase run over a FakeTransport: what it asks the hosts, in which order, and
what it makes of the answers (probe rounds, counter tables, unreachable hosts, the arping
fallback). The hosts answer as a working Direct Routing cluster does unless a test says not."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Collection
from dataclasses import dataclass, field

import pytest

from reconciler.desired.models import Desired, Settings, VerifySettings
from reconciler.transport.fake import Call, FakeTransport, Reply
from reconciler.verify import run, traffic
from reconciler.verify.probe_arp import NOT_PERMITTED
from reconciler.verify.result import VerificationResult
from tests.statecases import HOSTS, VIP_DNS, VIP_HTTP, _mac, cluster_desired

VIPS = (VIP_HTTP, VIP_DNS)


@dataclass
class Cluster:
    """The hosts of tests.statecases' cluster, lvs1 active; each field a way to break it."""

    starved: Collection[str] = ()  # real servers the director sends nothing to
    nft_fails: Collection[str] = ()  # hosts where the probe table cannot be installed
    no_packet_socket: bool = False  # the client's login cannot send its own ARP probe
    tables: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)  # tables deleted, neighbour entries read

    def __call__(self, call: Call) -> Reply | Awaitable[Reply]:
        host, argv = call.host, call.argv
        if argv[:3] == ("ip", "-j", "addr"):
            addrs = [HOSTS[host], *(VIPS if host == "lvs1" else ())]
            addr_info = [{"family": "inet", "local": a, "prefixlen": 24} for a in addrs]
            link = {"ifname": "eth0", "address": _mac(host), "addr_info": addr_info}
            return Reply(0, json.dumps([link]))
        if argv == ("nft", "-f", "-"):
            if host in self.nft_fails:
                return Reply(1, "", "Error: Could not process rule")
            self.tables[host] = re.findall(r'\t\t(.*) counter name "(c\d+)"', call.script)
            return Reply(0)
        if argv[:4] == ("nft", "-j", "list", "counters"):
            counters = [
                {"counter": {"name": name, "packets": self.packets(host, match)}}
                for match, name in self.tables[host]
            ]
            return Reply(0, json.dumps({"nftables": [{"metainfo": {}}, *counters]}))
        if argv[:3] == ("nft", "delete", "table"):
            self.log.append(f"delete {host}")
            return Reply(0)
        if argv[:2] == ("python3", "-") and "--iface" in argv:
            if self.no_packet_socket:
                return Reply(NOT_PERMITTED, "", "socket: Operation not permitted")
            return Reply(0, json.dumps({"responders": [[_mac("lvs1"), 3]]}))
        if argv[0] == "arping":
            return Reply(0, f"Unicast reply from {argv[-1]} [{_mac('lvs1').upper()}]  0.7ms\n")
        if argv[:2] == ("python3", "-"):
            count = int(argv[argv.index("--count") + 1])
            answered = {h: count for h in ("web1", "web2", "web3") if h not in self.starved}
            return Reply(0, json.dumps({"requested": count, "ok": count, "failed": 0,
                                        "errors": {}, "answered_by": answered}))  # fmt: skip
        if argv[:3] == ("ip", "-j", "neigh"):
            return self.neighbour(argv[4])
        raise AssertionError(f"{host} was asked {argv}")

    async def neighbour(self, vip: str) -> Reply:
        for _ in range(5):  # a round trip takes a while
            await asyncio.sleep(0)
        self.log.append(f"neighbour {vip}")
        return Reply(0, json.dumps([{"dst": vip, "lladdr": _mac("lvs1")}]))

    def packets(self, host: str, match: str) -> int:
        if match.startswith("ether saddr") or match.startswith(
            tuple(f"ip saddr {v}" for v in VIPS)
        ):
            return 0  # replies go straight to the client, never through the director
        return 0 if host in self.starved else 10


def _desired(drained: Collection[str] = ()) -> Desired:
    desired = cluster_desired(director="ipvsadm")
    web = desired.clusters["web"]
    services = tuple(
        svc.model_copy(update={"real_servers": tuple(
            rs.model_copy(update={"weight": 0 if rs.host in drained else rs.weight})
            for rs in svc.real_servers
        )})
        for svc in web.services
    )  # fmt: skip
    settings = Settings(verify=VerifySettings(clients=("client1",)))
    clusters = {"web": web.model_copy(update={"services": services})}
    return desired.model_copy(update={"settings": settings, "clusters": clusters})


async def _verify(
    cluster: Cluster, unreachable: Collection[str] = (), drained: Collection[str] = ()
) -> tuple[VerificationResult, FakeTransport]:
    transport = FakeTransport(default=cluster, unreachable=set(unreachable))
    return await run.verify_desired(_desired(drained), transport), transport


def _probes(transport: FakeTransport, vip: str) -> int:
    return sum(
        1 for c in transport.calls
        if c.argv[:2] == ("python3", "-") and "--iface" not in c.argv and vip in c.argv
    )  # fmt: skip


def _asked(transport: FakeTransport, argv: tuple[str, ...]) -> list[str]:
    return [c.host for c in transport.calls if c.argv[: len(argv)] == argv]


async def test_a_working_cluster_passes_in_one_round_and_leaves_no_table() -> None:
    cluster = Cluster()
    result, transport = await _verify(cluster)
    assert result.ok, result.failures
    assert [(s.service, s.rounds, s.distribution) for s in result.services] == [
        ("http", 1, {"web1": 10, "web2": 10, "web3": 10}),
        ("dns", 1, {"web1": 10}),
    ]
    # Each real server's replies are counted on the director by its MAC: none came that way.
    assert [rs.via_director for rs in result.services[0].real_servers] == [0, 0, 0]
    assert [(a.vip, a.director, a.neighbour_host) for a in result.arp] == [
        (VIP_HTTP, "lvs1", "lvs1"),
        (VIP_DNS, "lvs1", "lvs1"),
    ]
    # Every table installed is deleted, after the last counters were read.
    installed = _asked(transport, ("nft", "-f", "-"))
    assert sorted(installed) == ["lvs1", "web1", "web2", "web3"]
    assert sorted(_asked(transport, ("nft", "delete", "table"))) == sorted(installed)
    last_read = max(i for i, c in enumerate(transport.calls) if c.argv[:3] == ("nft", "-j", "list"))
    first_delete = min(
        i for i, c in enumerate(transport.calls) if c.argv[:3] == ("nft", "delete", "table")
    )
    assert last_read < first_delete
    # They go while the client's neighbour entries are read, not after.
    assert cluster.log[-1].startswith("neighbour"), cluster.log


async def test_a_starved_real_server_gets_more_rounds_then_is_named() -> None:
    result, transport = await _verify(Cluster(starved={"web2"}))
    assert _probes(transport, VIP_HTTP) == traffic.MAX_ROUNDS
    assert _probes(transport, VIP_DNS) == 1  # web1 alone serves dns, and got its requests
    assert [(f.check, f.host) for f in result.failures] == [("traffic", "web2")]


async def test_a_drained_real_server_that_gets_nothing_is_no_reason_for_another_round() -> None:
    result, transport = await _verify(Cluster(starved={"web3"}), drained={"web3"})
    assert result.ok, result.failures
    assert _probes(transport, VIP_HTTP) == 1
    assert result.services[0].distribution == {"web1": 10, "web2": 10, "web3": 0}


async def test_a_host_without_a_probe_table_is_a_note_and_is_not_asked_to_delete_it() -> None:
    result, transport = await _verify(Cluster(nft_fails={"web1"}))
    assert "web1" not in _asked(transport, ("nft", "delete", "table"))
    assert "web1" not in _asked(transport, ("nft", "-j", "list"))
    assert result.notes == ("web1: cannot count arrivals (nft): Error: Could not process rule",)
    # Its replies still count: the verdict stands on them.
    assert result.ok, result.failures


async def test_an_unreachable_client_fails_setup_and_sends_nothing() -> None:
    result, transport = await _verify(Cluster(), unreachable={"client1"})
    assert [(f.check, f.host) for f in result.failures] == [("setup", "client1")]
    assert result.services == () and result.arp == ()
    assert _probes(transport, VIP_HTTP) == 0
    assert _asked(transport, ("ip", "-j", "neigh")) == []
    # The tables were set up before the client was known to be down: they go all the same.
    installed = _asked(transport, ("nft", "-f", "-"))
    assert sorted(_asked(transport, ("nft", "delete", "table"))) == sorted(installed)


@pytest.mark.parametrize("down", ["lvs1", "web3"])
async def test_an_unreachable_counted_host_is_named_for_setup(down: str) -> None:
    result, _ = await _verify(Cluster(), unreachable={down})
    assert ("setup", down) in [(f.check, f.host) for f in result.failures]
    assert not result.ok


async def test_without_a_packet_socket_the_client_asks_with_arping() -> None:
    result, transport = await _verify(Cluster(no_packet_socket=True))
    assert result.ok, result.failures
    assert _asked(transport, ("arping", "-b")) == ["client1", "client1"]
    assert [r.host for a in result.arp for r in a.responders] == ["lvs1", "lvs1"]
