"""The nftables DSR director for real, in throwaway network namespaces (no lab/ needed).

A "switch" namespace holds a bridge; a client, a director and two real servers hang off it by
veth pairs. The real servers carry the VIP on lo with arp_ignore=1/arp_announce=2 and run a tiny
HTTP server; the director carries the VIP on eth0 and shoal's rendered `netdev shoal_dsr` table.
Requests from the client must reach both real servers and the replies must not pass the director.
A weight change applied with shoal's update transaction must keep an established connection on
its real server (the flow map survives), and the state function must see the table as in sync
when it reads the table back from `nft -j`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.desired.models import Desired, Inventory, Settings
from reconciler.facts.hostfacts import Fact, HostFacts, Interface, NftRuleset, NftTable
from reconciler.plan.steps import LowState, Phase
from states import nft_dsr, nft_dsr_model
from states.base import PlanContext

pytestmark = pytest.mark.lab

SUBNET = "10.98.0"
VIP = f"{SUBNET}.100"
HOSTS = {"cli": 31, "dir": 11, "rs1": 21, "rs2": 22}


def _need_root(*tools: str) -> None:
    """Skip (fail under CI=true) unless root with `tools` (default: ip, nft, python3)."""
    tools = tools or ("ip", "nft", "python3")
    missing = [t for t in tools if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        msg = f"needs root and {missing or '/'.join(tools)}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def _run(*argv: str, input: str | None = None, check: bool = True) -> str:
    res = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"{argv} failed ({res.returncode}): {res.stderr}")
    return res.stdout


@dataclass
class Net:
    prefix: str
    macs: dict[str, str]
    servers: list[subprocess.Popen[bytes]]

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def exec(self, host: str, *argv: str, input: str | None = None, check: bool = True) -> str:
        return _run("ip", "netns", "exec", self.ns(host), *argv, input=input, check=check)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    _need_root()
    prefix = f"sdsr{os.getpid() % 100000}"
    n = Net(prefix, {}, [])
    sw = f"{prefix}-sw"
    created: list[str] = []
    try:
        for name in [sw, *(n.ns(h) for h in HOSTS)]:
            _run("ip", "netns", "add", name)
            created.append(name)
        _run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", sw, "link", "set", "br0", "up")
        for i, (host, octet) in enumerate(HOSTS.items()):
            peer = f"p{i}"
            _run("ip", "-n", sw, "link", "add", peer, "type", "veth", "peer", "name", "eth0",
                 "netns", n.ns(host))  # fmt: skip
            _run("ip", "-n", sw, "link", "set", peer, "master", "br0", "up")
            n.exec(host, "ip", "link", "set", "lo", "up")
            n.exec(host, "ip", "link", "set", "eth0", "up")
            n.exec(host, "ip", "addr", "add", f"{SUBNET}.{octet}/24", "dev", "eth0")
            link = json.loads(n.exec(host, "ip", "-j", "link", "show", "eth0"))
            n.macs[host] = link[0]["address"]
        n.exec("dir", "ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
        for rs in ("rs1", "rs2"):
            # ARP suppression before the VIP, as on a real real server.
            for key, value in (("arp_ignore", "1"), ("arp_announce", "2")):
                n.exec(rs, "sysctl", "-qw", f"net.ipv4.conf.all.{key}={value}")
                n.exec(rs, "sysctl", "-qw", f"net.ipv4.conf.eth0.{key}={value}")
            n.exec(rs, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
            root = tmp_path_factory.mktemp(rs)
            (root / "index.html").write_text(rs)
            n.servers.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", n.ns(rs), "python3", "-m", "http.server",
                     "--bind", "0.0.0.0", "--directory", str(root), "80"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for rs in ("rs1", "rs2"):
            _wait_http(n, rs)
        yield n
    finally:
        for p in n.servers:
            p.terminate()
            p.wait(timeout=10)
        for name in reversed(created):
            _run("ip", "netns", "del", name, check=False)


def _wait_http(n: Net, rs: str) -> None:
    url = f"http://{SUBNET}.{HOSTS[rs]}/"
    probe = (
        "import urllib.request as u, sys\n"
        "print(u.urlopen(sys.argv[1], timeout=2).read().decode())\n"
    )
    for _ in range(50):
        if n.exec("cli", "python3", "-c", probe, url, check=False).strip() == rs:
            return
        time.sleep(0.1)
    raise AssertionError(f"http server on {rs} did not come up")


def _args(n: Net, w1: int, w2: int) -> dict[str, object]:
    return {
        "interface": "eth0",
        "director_mac": n.macs["dir"],
        "drain_timeout": 1,
        "services": [
            {
                "protocol": "tcp", "vip": VIP, "port": 80, "persistence": 0,
                "members": [
                    {"host": "rs1", "mac": n.macs["rs1"], "weight": w1},
                    {"host": "rs2", "mac": n.macs["rs2"], "weight": w2},
                ],
            }
        ],
    }  # fmt: skip


_FETCH = """
import socket, sys
seen = []
for i in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 80), timeout=3)
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    seen.append(data.split(b"\\r\\n\\r\\n", 1)[1].decode())
print(" ".join(seen))
"""


def _fetch(n: Net, count: int) -> list[str]:
    return n.exec("cli", "python3", "-c", _FETCH, VIP, str(count)).split()


def _facts(n: Net) -> HostFacts:
    listing = n.exec("dir", "nft", "-j", "list", "ruleset")
    tables = []
    for obj in json.loads(listing)["nftables"]:
        if "table" in obj:
            t = obj["table"]
            one = n.exec("dir", "nft", "-j", "list", "table", t["family"], t["name"])
            tables.append(NftTable(family=t["family"], name=t["name"], canonical_json=one))
    u: Fact[object] = Fact.unknown("not needed")
    return HostFacts(
        host="dir", hostname=Fact.of("dir"),
        interfaces=Fact.of((Interface(name="eth0", mac=n.macs["dir"], up=True),)),
        sysctls=u, arptables=u, iptables_nat=u, keepalived=u, ipvs=u, files=u, tools=u,
        services=u, nft=Fact.of(NftRuleset(tables=tuple(tables))),
    )  # fmt: skip


def _plan(n: Net, w1: int, w2: int) -> tuple[LowState, PlanContext]:
    low = LowState(id="nft-dsr", function=nft_dsr.FUNCTION, host="dir",
                   args=_args(n, w1, w2), phase=Phase.DIRECTOR_PRIMARY)  # fmt: skip
    desired = Desired(settings=Settings(), inventory=Inventory(hosts={}), clusters={},
                      known_hosts="")  # fmt: skip
    return low, PlanContext(desired=desired, facts={"dir": _facts(n)})


def _apply(n: Net, low: LowState, ctx: PlanContext, scratch: Path) -> int:
    """Run the planned steps in the director namespace, with file paths moved to `scratch`."""
    result = nft_dsr.TABLE_PRESENT.run(low, ctx)
    assert not result.skipped
    moved = {}
    for step in result.steps:
        for w in step.writes:
            local = scratch / Path(w.path).name
            local.write_text(w.content)
            moved[w.path] = str(local)
        for argv in step.commands:
            n.exec("dir", *(moved.get(a, a) for a in argv))
    return len(result.steps)


def test_dsr_balances_and_replies_bypass_director(net: Net, tmp_path: Path) -> None:
    low, ctx = _plan(net, 1, 1)
    assert _apply(net, low, ctx, tmp_path) == 1
    # A probe on the director's ingress counts frames sourced from the VIP: DSR replies must go
    # from the real servers to the client directly, never through the director.
    probe_table = (
        "table netdev probe {\n"
        "\tchain c {\n"
        '\t\ttype filter hook ingress device "eth0" priority -500; policy accept;\n'
        f"\t\tip saddr {VIP} counter\n"
        "\t}\n"
        "}\n"
    )
    net.exec("dir", "nft", "-f", "-", input=probe_table)
    seen = _fetch(net, 24)
    assert set(seen) == {"rs1", "rs2"}, seen
    probe = net.exec("dir", "nft", "list", "chain", "netdev", "probe", "c")
    assert "packets 0 bytes 0" in probe, probe
    net.exec("dir", "nft", "delete", "table", "netdev", "probe")
    # Read back through facts: in sync, nothing to do.
    low, ctx = _plan(net, 1, 1)
    result = nft_dsr.TABLE_PRESENT.run(low, ctx)
    assert result.steps == () and result.skipped == ()


def test_weight_change_keeps_established_flow(net: Net, tmp_path: Path) -> None:
    low, ctx = _plan(net, 1, 1)
    _apply(net, low, ctx, tmp_path)
    # An established connection, no request sent yet; it tells us its source port.
    conn = subprocess.Popen(
        ["ip", "netns", "exec", net.ns("cli"), "python3", "-c",
         "import socket,sys\n"
         f"s=socket.create_connection(('{VIP}',80),timeout=10)\n"
         "print(s.getsockname()[1], flush=True)\n"
         "sys.stdin.readline()\n"
         "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
         "d=b''\n"
         "while c:=s.recv(4096): d+=c\n"
         "print(d.split(b'\\r\\n\\r\\n',1)[1].decode())\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert conn.stdout is not None
    sport = conn.stdout.readline().strip()
    flows = net.exec("dir", "nft", "list", "map", "netdev", nft_dsr_model.TABLE,
                     f"flows_tcp_{VIP.replace('.', '_')}_80")  # fmt: skip
    found = re.search(rf"{SUBNET}\.{HOSTS['cli']} \. {sport} [^:]*: ([0-9a-f:]{{17}})", flows)
    assert found, flows
    first = next(h for h in ("rs1", "rs2") if net.macs[h] == found.group(1))
    other = "rs2" if first == "rs1" else "rs1"
    # Drain `first`: every bucket goes to `other`; the update must keep the flow map.
    w1, w2 = (0, 1) if first == "rs1" else (1, 0)
    low, ctx = _plan(net, w1, w2)
    result = nft_dsr.TABLE_PRESENT.run(low, ctx)
    assert "keep flow maps" in result.steps[0].description
    assert any(s.id.endswith(f"/{net.macs[first]}") for s in result.steps[1:])
    _apply(net, low, ctx, tmp_path)
    out, _ = conn.communicate("go\n", timeout=15)
    assert out.strip() == first  # the established flow stayed on its real server
    assert set(_fetch(net, 8)) == {other}  # new flows avoid the drained one


def test_undo_restores_previous_table(net: Net, tmp_path: Path) -> None:
    low, ctx = _plan(net, 1, 1)
    _apply(net, low, ctx, tmp_path)
    low, ctx = _plan(net, 3, 1)
    result = nft_dsr.TABLE_PRESENT.run(low, ctx)
    _apply(net, low, ctx, tmp_path)
    undo_file = tmp_path / Path(nft_dsr.UNDO_PATH).name
    assert result.steps[0].undo == (("nft", "-f", nft_dsr.UNDO_PATH),)
    net.exec("dir", "nft", "-f", str(undo_file))
    low, ctx = _plan(net, 1, 1)
    assert nft_dsr.TABLE_PRESENT.run(low, ctx).steps == ()
