"""IPv6 VIPs on real servers, every arp_method, through the real apply path on real hosts.

A dual-stack cluster (http on the lab's IPv4 VIP, http6 on its IPv6 VIP `<prefix>::100`, real
servers web1 and web2) is planned from a config repo and applied to the real servers; the
directors' part of the plan is left out (this branch's director backends do not carry IPv6
yet), so the real-server side is proven on its own, for each method in turn on one lab:

- while the plan applies, client1 hears no advertisement for the VIP and no packet from it;
- afterwards a Neighbour Solicitation for the VIP, sent by the verification's own probe from
  client1 and from lvs1, is answered by nobody; with the VIP put on lvs1's eth0 by hand (the
  active director) it is answered by exactly one MAC, lvs1's;
- each real server accepts the VIP's traffic: client1, its neighbour entry for the VIP pinned
  to that server's MAC (what a director's rewrite does), gets the server's HTTP reply over a
  TCP connection to [VIP]:80, which only completes if the replies come from the VIP;
- a reboot (runtime VIP and rules gone) leaves work for the plan, and shoal-restore (what the
  boot unit runs) brings it all back: the plan is empty again;
- an injected failure on web2 rolls both real servers back byte for byte: `ip -j addr` (both
  families), ip6tables-save and iptables-save, nft, arptables, sysctls, files.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import Lab, Topology
from lab.httpd import start_services, stop_services
from reconciler.apply.executor import apply_plan
from reconciler.apply.runresult import RunResult
from reconciler.desired.models import Desired
from reconciler.plan.steps import Plan
from reconciler.verify.probe_nd import nd_probe_source
from tests.conftest import require_lab
from tests.lab.executor_support import raw_state
from tests.lab.rollout_support import (
    HTTP_CHECK,
    PORT,
    explain,
    pending,
    plan_for,
    settings_toml,
    transport_for,
    write_repo,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

METHODS = ("sysctl", "arptables", "nft-arp", "redirect")
REAL_SERVERS = ("web1", "web2")
LISTENER = (Path(__file__).parent / "nd_listen.py").read_text()


@dataclass
class V6Lab:
    lab: Lab
    vip4: str
    vip6: str
    workdir: Path

    def desired(self, arp_method: str | None) -> Desired:
        """The dual-stack cluster with `arp_method`; None: no cluster at all."""
        dest = self.workdir / f"repo-{secrets.token_hex(4)}"
        return write_repo(self.lab, dest, None if arp_method is None else dual_stack_toml(
            self.vip4, self.vip6, arp_method), settings_toml())  # fmt: skip


def dual_stack_toml(vip4: str, vip6: str, arp_method: str) -> str:
    servers = "".join(
        f'\n  [[service.real_server]]\n  host = "{h}"\n  weight = 1\n' for h in REAL_SERVERS
    )
    service = """
[[service]]
name = "{name}"
vip = "{vip}"
port = {port}
protocol = "tcp"
scheduler = "wlc"
check = {check}
{servers}"""
    return (
        f'[cluster]\nname = "web"\ndirectors = ["lvs1", "lvs2"]\ndirector = "nftables"\n'
        f'arp_method = "{arp_method}"\n'
        + service.format(name="http", vip=vip4, port=PORT, check=HTTP_CHECK, servers=servers)
        + service.format(name="http6", vip=vip6, port=PORT, check=HTTP_CHECK, servers=servers)
    )


@pytest.fixture(scope="module")
async def v6lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[V6Lab]:
    require_lab()
    topology = Topology.build(directors=2, real_servers=2, clients=1)
    async with Lab.up(f"s{secrets.token_hex(3)}", topology, ephemeral=True) as lab:
        vip4 = str(ipaddress.IPv4Network(lab.subnet)[100])
        vip6 = str(ipaddress.IPv6Network(lab.subnet6).network_address + 0x100)
        await start_services(lab, [PORT])
        try:
            yield V6Lab(lab, vip4, vip6, tmp_path_factory.mktemp("v6rs"))
        finally:
            await stop_services(lab)


def real_servers_only(plan: Plan) -> Plan:
    return plan.model_copy(
        update={"hosts": {h: hp for h, hp in plan.hosts.items() if h in REAL_SERVERS}}
    )


def real_server_steps(plan: Plan) -> list[str]:
    return pending(real_servers_only(plan))


async def apply_real_servers(lab: Lab, desired: Desired) -> tuple[RunResult | None, Plan]:
    async with transport_for(lab, desired) as t:
        plan = real_servers_only(await plan_for(desired, t))
        if plan.empty:
            return None, plan
        result = await apply_plan(plan, desired, t)
        return result, await plan_for(desired, t)


async def converge(v: V6Lab, arp_method: str | None) -> Desired:
    desired = v.desired(arp_method)
    result, after = await apply_real_servers(v.lab, desired)
    assert result is None or result.ok, explain(result)
    assert real_server_steps(after) == []
    return desired


@contextlib.asynccontextmanager
async def listening(lab: Lab, vip: str) -> AsyncIterator[dict[str, list[list[object]]]]:
    """What client1 hears about `vip` during the block (filled in when the block ends)."""
    token = secrets.token_hex(4)
    until, ready = f"/tmp/nd-listen-{token}.stop", f"/tmp/nd-listen-{token}.ready"
    heard: dict[str, list[list[object]]] = {}
    task = asyncio.ensure_future(lab.exec(
        "client1", ["python3", "-", "--vip", vip, "--until", until, "--ready", ready],
        input=LISTENER, timeout=120,
    ))  # fmt: skip
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while (await lab.exec("client1", ["test", "-e", ready], check=False)).returncode:
        assert loop.time() < deadline and not task.done(), "the listener did not start"
        await asyncio.sleep(0.05)
    try:
        yield heard
    finally:
        await lab.exec("client1", ["touch", until])
        heard.update(json.loads((await task).stdout))
        await lab.exec("client1", ["rm", "-f", until, ready])


async def nd_responders(lab: Lab, host: str, vip: str) -> list[str]:
    argv = ["python3", "-", "--iface", "eth0", "--vip", vip, "--count", "5", "--window", "1"]
    out = await lab.exec(host, argv, input=nd_probe_source())
    return [mac for mac, _ in json.loads(out.stdout)["responders"]]


async def http_via(lab: Lab, server: str, vip6: str) -> str:
    """client1's HTTP reply from [vip6]:80 with its neighbour entry for the VIP on `server`."""
    mac = lab.hosts[server].mac
    await lab.exec("client1", ["ip", "-6", "neigh", "replace", vip6, "lladdr", mac,
                               "dev", "eth0", "nud", "permanent"])  # fmt: skip
    try:
        got = await lab.exec("client1", ["curl", "-sS", "-g", "--max-time", "10",
                                         f"http://[{vip6}]:{PORT}/"], check=False)  # fmt: skip
    finally:
        await lab.exec("client1", ["ip", "-6", "neigh", "del", vip6, "dev", "eth0"], check=False)
    assert got.returncode == 0, got.stderr
    return got.stdout


async def reboot_runtime(lab: Lab, host: str, vip4: str, vip6: str, method: str) -> None:
    """What a reboot takes away from a real server: shoal's runtime VIPs, rules and sysctls."""
    script = f"""
ip addr del {vip6}/128 dev lo 2>/dev/null
ip addr del {vip4}/32 dev lo 2>/dev/null
ip addr del {vip4}/32 dev eth0 2>/dev/null
while ip6tables -t nat -D PREROUTING -d {vip6}/128 -p tcp -m tcp --dport {PORT} -j REDIRECT \
  2>/dev/null; do :; done
while iptables -t nat -D PREROUTING -d {vip4}/32 -p tcp -m tcp --dport {PORT} -j REDIRECT \
  2>/dev/null; do :; done
arptables -F 2>/dev/null
nft delete table arp shoal_arp 2>/dev/null
sysctl -q -w net.ipv4.conf.all.arp_ignore=0 net.ipv4.conf.all.arp_announce=0 \
  net.ipv4.conf.eth0.arp_ignore=0 net.ipv4.conf.eth0.arp_announce=0
true
"""
    await lab.exec(host, ["sh", "-c", script])


@pytest.mark.parametrize("method", METHODS)
async def test_an_ipv6_vip_on_real_servers_is_silent_accepted_persisted_and_rolled_back(
    v6lab: V6Lab, method: str
) -> None:
    lab, vip4, vip6 = v6lab.lab, v6lab.vip4, v6lab.vip6
    macs = {h: lab.hosts[h].mac for h in lab.hosts}
    # From nothing (the previous method's cluster removed) to this method's cluster, heard.
    await converge(v6lab, None)
    async with listening(lab, vip6) as heard:
        desired = await converge(v6lab, method)
    assert heard == {"adverts": [], "from_vip": []}, heard

    web = {h: json.loads((await lab.exec(h, ["ip", "-j", "-6", "addr", "show"])).stdout)
           for h in REAL_SERVERS}  # fmt: skip
    for h, links in web.items():
        held = [(link["ifname"], a) for link in links for a in link["addr_info"]
                if a["local"] == vip6]  # fmt: skip
        if method == "redirect":
            assert held == [], h  # the VIP never exists on the host
            rules = (await lab.exec(h, ["ip6tables-save", "-t", "nat"])).stdout
            assert f"-A PREROUTING -d {vip6}/128 -p tcp -m tcp --dport {PORT} -j REDIRECT" in rules
        else:
            assert [(dev, a["prefixlen"]) for dev, a in held] == [("lo", 128)], h
            assert not held[0][1].get("tentative"), h

    # Nobody answers for the VIP, asked from a client and from another host...
    for asker in ("client1", "lvs1"):
        assert await nd_responders(lab, asker, vip6) == [], asker
    # ...and with the VIP on lvs1's eth0 (the active director), lvs1 alone does.
    # The listener hears those answers: its silence above is not deafness.
    async with listening(lab, vip6) as control:
        await lab.exec("lvs1", ["ip", "addr", "add", f"{vip6}/128", "dev", "eth0", "nodad"])
        try:
            for asker in ("client1", "lvs2"):
                assert await nd_responders(lab, asker, vip6) == [macs["lvs1"]], asker
        finally:
            await lab.exec("lvs1", ["ip", "addr", "del", f"{vip6}/128", "dev", "eth0"])
    assert {mac for _, mac, _ in control["adverts"]} == {macs["lvs1"]}, control

    # Every real server takes the VIP's traffic and answers from the VIP.
    for h in REAL_SERVERS:
        reply = await http_via(lab, h, vip6)
        assert reply.split()[0] == h, reply
        if method != "redirect":  # REDIRECT hands the server its own address as the local one
            assert reply.split()[1] == vip6, reply

    # A reboot takes the runtime state; the boot restore brings back exactly what was planned.
    async with transport_for(lab, desired) as t:
        for h in REAL_SERVERS:
            await reboot_runtime(lab, h, vip4, vip6, method)
        flushed = real_servers_only(await plan_for(desired, t))
        assert {h for h, hp in flushed.hosts.items() if hp.steps} == set(REAL_SERVERS)
        for h in REAL_SERVERS:
            await lab.exec(h, ["/usr/local/sbin/shoal-restore"])
        assert real_server_steps(await plan_for(desired, t)) == []

    # An injected failure on web2 rolls both real servers back, byte for byte.
    await converge(v6lab, None)
    before = {h: await raw_state(lab, h) for h in REAL_SERVERS}
    await lab.inject_failing_command("web2", "/usr/bin/systemctl", exit_code=4)
    try:
        result, _ = await apply_real_servers(lab, v6lab.desired(method))
    finally:
        await lab.clear_injections("web2")
    assert result is not None and not result.ok
    assert {r.host for r in result.rollbacks} == set(REAL_SERVERS), explain(result)
    assert all(r.proven for r in result.rollbacks), explain(result)
    for h in REAL_SERVERS:
        assert await raw_state(lab, h) == before[h], (h, explain(result))
