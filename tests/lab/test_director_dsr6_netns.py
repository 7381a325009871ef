"""The nftables DSR director with an IPv6 service, for real, in throwaway network namespaces.

The topology of test_director_dsr_netns.py (a bridge, a client, a director, two real servers)
on a ULA /64 derived from this process's id (fd78:<pid>::/64, nothing else uses fd78::/16 here),
every address added `nodad`. The real servers hold the VIP as a /128 on lo (`nodad`): the sysctl
method's IPv6 form, added by hand here since the real server side is another branch's work; the
director holds it as a /128 on eth0 and runs shoal's planned `netdev shoal_dsr` table. IPv6
requests from the client must reach both real servers, the replies must not pass the director,
the client's neighbour entry for the VIP must be the director's MAC (the real servers' lo VIP is
not advertised on eth0), and the table must read back in sync.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from states import nft_dsr
from tests.lab.test_director_dsr_netns import HOSTS, Net, _apply, _need_root, _plan, _run

pytestmark = pytest.mark.lab

PREFIX = f"fd78:{os.getpid() % 0xFFFF:x}:0:1"
VIP6 = f"{PREFIX}::100"


def _addr(host: str) -> str:
    return f"{PREFIX}::{HOSTS[host]}"


@pytest.fixture(scope="module")
def net6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    _need_root()
    prefix = f"sds6{os.getpid() % 100000}"
    n = Net(prefix, {}, [])
    sw = f"{prefix}-sw"
    created: list[str] = []
    try:
        for name in [sw, *(n.ns(h) for h in HOSTS)]:
            _run("ip", "netns", "add", name)
            created.append(name)
        _run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", sw, "link", "set", "br0", "up")
        for i, host in enumerate(HOSTS):
            peer = f"p{i}"
            _run("ip", "-n", sw, "link", "add", peer, "type", "veth", "peer", "name", "eth0",
                 "netns", n.ns(host))  # fmt: skip
            _run("ip", "-n", sw, "link", "set", peer, "master", "br0", "up")
            n.exec(host, "ip", "link", "set", "lo", "up")
            n.exec(host, "ip", "link", "set", "eth0", "up")
            n.exec(host, "ip", "-6", "addr", "add", f"{_addr(host)}/64", "dev", "eth0", "nodad")
            link = json.loads(n.exec(host, "ip", "-j", "link", "show", "eth0"))
            n.macs[host] = link[0]["address"]
        n.exec("dir", "ip", "-6", "addr", "add", f"{VIP6}/128", "dev", "eth0", "nodad")
        for rs in ("rs1", "rs2"):
            n.exec(rs, "ip", "-6", "addr", "add", f"{VIP6}/128", "dev", "lo", "nodad")
            root = tmp_path_factory.mktemp(rs)
            (root / "index.html").write_text(rs)
            n.servers.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", n.ns(rs), "python3", "-m", "http.server",
                     "--bind", "::", "--directory", str(root), "80"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for rs in ("rs1", "rs2"):
            _wait_http6(n, rs)
        yield n
    finally:
        for p in n.servers:
            p.terminate()
            p.wait(timeout=10)
        for name in reversed(created):
            _run("ip", "netns", "del", name, check=False)


_FETCH6 = """
import socket, sys
seen = []
for i in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET6)
    s.settimeout(3)
    s.connect((sys.argv[1], 80))
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    seen.append(data.split(b"\\r\\n\\r\\n", 1)[1].decode())
print(" ".join(seen))
"""


def _fetch6(n: Net, target: str, count: int, check: bool = True) -> list[str]:
    return n.exec("cli", "python3", "-c", _FETCH6, target, str(count), check=check).split()


def _wait_http6(n: Net, rs: str) -> None:
    for _ in range(50):
        if _fetch6(n, _addr(rs), 1, check=False) == [rs]:
            return
        time.sleep(0.1)
    raise AssertionError(f"IPv6 http server on {rs} did not come up")


def _args6(n: Net) -> dict[str, object]:
    members = [{"host": rs, "mac": n.macs[rs], "weight": 1} for rs in ("rs1", "rs2")]
    return {"interface": "eth0", "director_mac": n.macs["dir"], "drain_timeout": 1,
            "services": [{"protocol": "tcp", "vip": VIP6, "port": 80, "members": members}]}


def test_ipv6_dsr_balances_replies_bypass_director_and_nd_names_it(
    net6: Net, tmp_path: Path
) -> None:
    low, ctx = _plan(net6, 1, 1)
    low = low.model_copy(update={"args": _args6(net6)})
    assert _apply(net6, low, ctx, tmp_path) == 1
    probe_table = (
        "table netdev probe {\n"
        "\tchain c {\n"
        '\t\ttype filter hook ingress device "eth0" priority -500; policy accept;\n'
        f"\t\tip6 saddr {VIP6} counter\n"
        f"\t\tip6 daddr {VIP6} tcp dport 80 counter\n"
        "\t}\n"
        "}\n"
    )
    net6.exec("dir", "nft", "-f", "-", input=probe_table)
    seen = _fetch6(net6, VIP6, 24)
    assert len(seen) == 24 and set(seen) == {"rs1", "rs2"}, seen
    counters = net6.exec("dir", "nft", "list", "chain", "netdev", "probe", "c")
    lines = [ln for ln in counters.splitlines() if "counter packets" in ln]
    # Replies never pass the director; the requests all do.
    assert "packets 0 bytes 0" in lines[0], counters
    assert "packets 0 bytes 0" not in lines[1], counters
    net6.exec("dir", "nft", "delete", "table", "netdev", "probe")
    # The client resolved the VIP by Neighbour Discovery to the director, not to a real server.
    neigh = net6.exec("cli", "ip", "-6", "-j", "neigh", "show", VIP6)
    assert [e.get("lladdr") for e in json.loads(neigh)] == [net6.macs["dir"]], neigh
    # Read back through the facts: in sync, nothing to do.
    low, ctx = _plan(net6, 1, 1)
    low = low.model_copy(update={"args": _args6(net6)})
    result = nft_dsr.TABLE_PRESENT.run(low, ctx)
    assert result.steps == () and result.skipped == ()
