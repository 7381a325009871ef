"""shoal-healthd on an nftables DSR director, for real, in throwaway network namespaces.

A client, a director and two real servers on a bridge, as in test_director_dsr_netns.py. The
cluster (loaded from TOML by the real loader) has one service per check type: http status,
http body_regex, https with SNI (a throwaway self-signed certificate made here), dns with an
expected answer, udp send/receive. The director gets shoal's compiled DSR table and runs the
checker with the config shoal compiled for it (the unit's ExecStart, with paths in tmp: the
namespaces have no systemd). For each service in turn, rs1 starts to answer wrong: traffic
through the VIP must reach rs2 only, the checker's state file must name rs1, and a plan made
from the director's facts at that moment must leave the table alone (the checker's change is
not drift); then rs1 answers right again and traffic through the VIP reaches it again.

Cost: about 30-40 s (two namespaces' worth of set-up, five flips of ~2-4 s each way).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from reconciler.desired.loader import load_tree
from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import Fact, FileInfo, HostFacts, Interface, NftRuleset, NftTable
from reconciler.plan import compile_health, healthd_agent
from reconciler.plan.compile import compile_desired
from reconciler.plan.persistence import RESTORE_SCRIPT
from reconciler.plan.steps import LowState
from states import nft_dsr
from states.base import PlanContext
from tests.lab.test_director_dsr_netns import _need_root, _run

pytestmark = pytest.mark.lab

SUBNET = "10.97.0"
VIP = f"{SUBNET}.100"
HOSTS = {"cli": 31, "dir": 11, "rs1": 21, "rs2": 22}
HERE = Path(__file__).parent
AGENT = Path(healthd_agent.__file__)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHuLTizNh4bR1Umbtg/D4TW6dGG0+WSBQnESDz2066Lw"

CLUSTER = f"""
[cluster]
name = "web"
directors = ["dir"]
director = "nftables"
arp_method = "sysctl"

[[service]]
name = "web"
vip = "{VIP}"
port = 80
# Timeouts of 3 s: a loaded machine must not make a slow TLS handshake look like a failure
# (each case fails by a wrong answer, which the checker sees at once).
check = {{ type = "http", path = "/status", expect = 200, interval = 1, timeout = 3 }}
real_server = [{{ host = "rs1" }}, {{ host = "rs2" }}]

[[service]]
name = "regex"
vip = "{VIP}"
port = 8080
check = {{ type = "http", path = "/", body_regex = "^ok ", interval = 1, timeout = 3 }}
real_server = [{{ host = "rs1" }}, {{ host = "rs2" }}]

[[service]]
name = "tls"
vip = "{VIP}"
port = 443
check = {{ type = "https", sni = "www.lab.test", path = "/status", interval = 1, timeout = 3 }}
real_server = [{{ host = "rs1" }}, {{ host = "rs2" }}]

[[service]]
name = "dns"
vip = "{VIP}"
port = 53
protocol = "udp"
real_server = [{{ host = "rs1" }}, {{ host = "rs2" }}]
check.type = "dns"
check.query_name = "www.lab.test"
check.answer = "192.0.2.1"
check.interval = 1
check.timeout = 3

[[service]]
name = "echo"
vip = "{VIP}"
port = 9000
protocol = "udp"
check = {{ type = "udp", send = "70696e67", receive = "706f6e67", interval = 1, timeout = 3 }}
real_server = [{{ host = "rs1" }}, {{ host = "rs2" }}]
"""


@dataclass
class Net:
    prefix: str
    tmp: Path
    macs: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def exec(self, host: str, *argv: str, input: str | None = None, check: bool = True) -> str:
        return _run("ip", "netns", "exec", self.ns(host), *argv, input=input, check=check)

    def spawn(self, host: str, *argv: str, log: Path) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv],
                             stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
        self.procs.append(p)
        return p


def _desired() -> Desired:
    inventory = "".join(f'[hosts.{h}]\naddress = "{SUBNET}.{o}"\ninterface = "eth0"\n\n'
                        for h, o in HOSTS.items())  # fmt: skip
    known = "".join(f"{SUBNET}.{o} {KEY} {h}\n" for h, o in HOSTS.items())
    files = {"shoal.toml": b'[verify]\nclients = ["cli"]\n', "inventory.toml": inventory.encode(),
             "known_hosts": known.encode(), "clusters/web.toml": CLUSTER.encode()}  # fmt: skip
    return load_tree(files)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    _need_root("ip", "nft", "openssl")
    prefix = f"hchk{os.getpid() % 100000}"
    n = Net(prefix, tmp_path_factory.mktemp("healthd"))
    sw = f"{prefix}-sw"
    created: list[str] = []
    try:
        for name in [sw, *(n.ns(h) for h in HOSTS)]:
            _run("ip", "netns", "add", name)
            created.append(name)
        _run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", sw, "link", "set", "br0", "up")
        for i, (host, octet) in enumerate(HOSTS.items()):
            _run("ip", "-n", sw, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0",
                 "netns", n.ns(host))  # fmt: skip
            _run("ip", "-n", sw, "link", "set", f"p{i}", "master", "br0", "up")
            n.exec(host, "ip", "link", "set", "lo", "up")
            n.exec(host, "ip", "link", "set", "eth0", "up")
            n.exec(host, "ip", "addr", "add", f"{SUBNET}.{octet}/24", "dev", "eth0")
            link = json.loads(n.exec(host, "ip", "-j", "link", "show", "eth0"))
            n.macs[host] = link[0]["address"]
        n.exec("dir", "ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
        cert, key = n.tmp / "cert.pem", n.tmp / "key.pem"
        _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=www.lab.test", "-keyout", str(key), "-out", str(cert))  # fmt: skip
        for rs in ("rs1", "rs2"):
            for k, v in (("arp_ignore", "1"), ("arp_announce", "2")):
                n.exec(rs, "sysctl", "-qw", f"net.ipv4.conf.all.{k}={v}")
                n.exec(rs, "sysctl", "-qw", f"net.ipv4.conf.eth0.{k}={v}")
            n.exec(rs, "ip", "addr", "add", f"{VIP}/32", "dev", "lo")
            (n.tmp / rs).mkdir()
            n.spawn(rs, sys.executable, str(HERE / "health_responder.py"), rs, str(n.tmp / rs),
                    str(cert), str(key), log=n.tmp / f"{rs}.log")  # fmt: skip
        yield n
    finally:
        for p in n.procs:
            p.terminate()
            p.wait(timeout=10)
        for name in reversed(created):
            _run("ip", "netns", "del", name, check=False)


def _facts(n: Net, state: Path | None) -> dict[str, HostFacts]:
    """What the facts script would report: interfaces everywhere; the director's nft tables
    and the checker's state file."""
    out = {}
    u: Fact[object] = Fact.unknown("not needed")
    for host in HOSTS:
        nft: Fact[object] = u
        files: dict[str, FileInfo] = {}
        if host == "dir":
            tables = []
            for obj in json.loads(n.exec("dir", "nft", "-j", "list", "ruleset"))["nftables"]:
                if "table" in obj:
                    t = obj["table"]
                    one = n.exec("dir", "nft", "-j", "list", "table", t["family"], t["name"])
                    tables.append(NftTable(family=t["family"], name=t["name"], canonical_json=one))
            nft = Fact.of(NftRuleset(tables=tuple(tables)))
            there = state is not None and state.exists()
            files[compile_health.STATE_PATH] = FileInfo(
                path=compile_health.STATE_PATH, exists=there,
                content=state.read_text() if there and state else None)  # fmt: skip
        out[host] = HostFacts(
            host=host, hostname=Fact.of(host),
            interfaces=Fact.of((Interface(name="eth0", mac=n.macs[host], up=True),)),
            sysctls=u, arptables=u, iptables_nat=u, keepalived=u, ipvs=u, files=Fact.of(files),
            tools=u, services=u, nft=nft,
        )  # fmt: skip
    return out


def _table_state(desired: Desired, facts: dict[str, HostFacts]) -> tuple[LowState, PlanContext]:
    lows = [s for s in compile_desired(desired, facts) if s.host == "dir"]
    low = next(s for s in lows if s.function == nft_dsr.FUNCTION)
    return low, PlanContext(desired=desired, facts=facts)


def _apply_table(n: Net, desired: Desired) -> None:
    low, ctx = _table_state(desired, _facts(n, None))
    result = nft_dsr.TABLE_PRESENT.run(low, ctx)
    assert not result.skipped, result.skipped
    for step in result.steps:
        moved = {}
        for w in step.writes:
            local = n.tmp / Path(w.path).name
            local.write_text(w.content)
            moved[w.path] = str(local)
        for argv in step.commands:
            n.exec("dir", *(moved.get(a, a) for a in argv))


_CLIENT = r"""
import socket, ssl, struct, sys
kind, vip, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = []
for i in range(count):
    try:
        if kind in ("web", "regex", "tls"):
            port = {"web": 80, "regex": 8080, "tls": 443}[kind]
            s = socket.create_connection((vip, port), timeout=2)
            if kind == "tls":
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                s = ctx.wrap_socket(s, server_hostname="www.lab.test")
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            s.close()
            seen.append([w for w in data.split(b"\r\n\r\n", 1)[1].decode().split()
                         if w.startswith("rs")][0])
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            if kind == "dns":
                q = struct.pack("!HHHHHH", i, 0x100, 1, 0, 0, 0) + b"\x03www\x03lab\x04test\x00"
                s.sendto(q + b"\x00\x01\x00\x01", (vip, 53))
                msg = s.recv(512)
                seen.append("rs%d" % struct.unpack("!I", msg[-10:-6])[0])
            else:
                s.sendto(b"ping", (vip, 9000))
                seen.append(s.recv(512).split()[1].decode())
            s.close()
    except OSError as exc:
        seen.append("error:" + type(exc).__name__)
print(" ".join(seen))
"""


def _through_vip(n: Net, kind: str, count: int = 16) -> list[str]:
    return n.exec("cli", sys.executable, "-c", _CLIENT, kind, VIP, str(count)).split()


def _until(what: str, ok: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = ok()
        if last is True:
            return
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout:g}s (last: {last})")


def _answers_both(n: Net, kind: str) -> object:
    seen = _through_vip(n, kind)
    return set(seen) == {"rs1", "rs2"} or seen


def _answers_rs2_only(n: Net, kind: str) -> object:
    seen = _through_vip(n, kind)
    return set(seen) == {"rs2"} or seen


KINDS = {"web": "tcp 10.97.0.100:80", "regex": "tcp 10.97.0.100:8080",
         "tls": "tcp 10.97.0.100:443", "dns": "udp 10.97.0.100:53",
         "echo": "udp 10.97.0.100:9000"}  # fmt: skip


def _reboot_director(net: Net, desired: Desired, config: Path, state: Path) -> Any:
    """What a reboot does to the director, then what the checker does at start: the boot
    restore loads the table with every configured weight (rs1 back in), the checker starts and
    takes rs1 out again from its state file. Its config here needs 1000 failed checks to take a
    server out, so only the state file can have done it."""
    for p in net.procs:
        if list(p.args)[-2:] == [str(config), str(state)]:  # type: ignore[arg-type]
            p.terminate()
            p.wait(timeout=10)
    facts = _facts(net, state)
    lows = [s for s in compile_desired(desired, facts) if s.host == "dir"]
    script = next(s for s in lows if s.args.get("path") == RESTORE_SCRIPT).args["content"]
    net.exec("dir", "sh", "-c", script)
    _until("web: rs1 back after the boot restore", partial(_answers_both, net, "web"))
    slow = net.tmp / "healthd-slow.json"
    slow.write_text(json.dumps({**json.loads(config.read_text()), "fall": 1000}))
    agent = net.spawn("dir", "python3", str(AGENT), str(slow), str(state),
                      log=net.tmp / "healthd-2.log")  # fmt: skip
    _until("web: rs1 out again from the state file", partial(_answers_rs2_only, net, "web"))
    # The rest of the test goes on with the usual config (it is read again without a restart).
    slow.write_text(config.read_text())
    return agent


def _held_only(state: Path, entry: str) -> bool:
    return list(json.loads(state.read_text())["down"]) == [entry]


def test_each_check_type_takes_a_failing_real_server_out_and_back(net: Net) -> None:
    desired = _desired()
    _apply_table(net, desired)
    config_low = next(s for s in compile_desired(desired, _facts(net, None))
                      if s.host == "dir" and s.id == "healthd-config")  # fmt: skip
    config = net.tmp / "healthd.json"
    config.write_text(config_low.args["content"])
    state = net.tmp / "state" / "state.json"
    agent = net.spawn("dir", "python3", str(AGENT), str(config), str(state),
                      log=net.tmp / "healthd.log")  # fmt: skip
    for kind in KINDS:
        _until(f"{kind}: both real servers through the VIP", partial(_answers_both, net, kind))
    for kind, key in KINDS.items():
        mode = net.tmp / "rs1" / f"mode-{kind}"
        mode.write_text("bad")
        _until(f"{kind}: rs1 out", partial(_answers_rs2_only, net, kind))
        # Only this service's rs1 held: on a loaded machine another check can time out for a
        # pass or two (a TLS handshake) and recover, so this is waited for, with a deadline.
        _until(f"{kind}: only {key} rs1 held", partial(_held_only, state, f"{key} rs1"))
        # The plan made from the director's facts now: the checker's change is not drift.
        low, ctx = _table_state(desired, _facts(net, state))
        member = [m for s in low.args["services"] for m in s["members"]
                  if f"{s['protocol']} {s['vip']}:{s['port']}" == key and m["host"] == "rs1"]
        assert member and member[0]["held_down"] is True, low.args
        result = nft_dsr.TABLE_PRESENT.run(low, ctx)
        assert result.steps == () and result.skipped == (), result.steps
        # The other services still reach both.
        other = next(k for k in KINDS if k != kind)
        _until(f"{other}: both real servers", partial(_answers_both, net, other))
        if kind == "web":
            agent = _reboot_director(net, desired, config, state)
        mode.write_text("good")
        _until(f"{kind}: rs1 back", partial(_answers_both, net, kind))
        _until(f"{kind}: state file empty",
               lambda: json.loads(state.read_text())["down"] == {})  # fmt: skip
    assert agent.poll() is None, (net.tmp / "healthd.log").read_text()
