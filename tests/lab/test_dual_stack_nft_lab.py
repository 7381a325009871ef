"""Dual stack end to end (issue 16): the nftables directors and every arp_method, through shoal.

One lab (lvs1 primary, lvs2 backup, web1..web3, client1) and one cluster serving `http` on the
lab's IPv4 VIP and `http6` on its IPv6 VIP `<prefix>::100` from the same real servers. Every
change goes the way `shoal apply` goes (config repo -> loader -> facts -> plan_desired ->
apply_plan, `rollout_support.converge`), with the verification phase on in the per-method test:
an apply passes only when traffic to both VIPs reaches every real server, the replies bypass
the director (its ingress return counter stays 0) and ARP / Neighbour Solicitations name lvs1.

For each arp_method in turn (the first builds the cluster on a fresh lab, the next ones change
the method):

- the apply with an extra table of its own that resets client1's IPv6 connections on web2 fails
  its verification, and every host it changed (all four, the first time; the real servers
  after) is rolled back byte for byte: `ip -j addr` (both families), ip6tables-save and
  iptables-save, arptables-save, the nft ruleset (tables in name order; the flow maps' expiring
  elements and iptables-nft's own tables, already compared by *-save, left out), sysctls, files;
- the cluster (web1, web2) converges and verifies, while client1 and lvs2 send Neighbour
  Solicitations for the IPv6 VIP round after round (the verification's own probe) and client1
  listens for every advertisement of it: only lvs1's MAC is ever heard (nobody's before the
  first apply puts the VIP there), and the VIP sends client1 nothing but replies;
- the real servers hold the VIP as the method says (a /128 on lo, not tentative; or no VIP and
  an ip6tables REDIRECT), and a reboot's loss of runtime state is restored by shoal-restore
  (what the boot unit runs) to an empty plan.

Then once, since the director side of a rollout does not depend on the method: web3 joins, and
is then drained and removed, each under a steady stream of IPv6 requests from client1 (none
fails; web3 serves after the join and not after the removal), and every solicitation round from
client1 and from lvs2 during both applies is answered by exactly one MAC, lvs1's.

Last, a takeover: lvs2 becomes the primary and takes the IPv6 VIP; its unsolicited Neighbour
Advertisement (states/nd_announce.py) is heard on client1, and the neighbour entries client1 and
web3 had for the VIP (lvs1's MAC) point at lvs2's right after the apply, before either sends
the VIP anything that would make the kernel ask again.
"""

from __future__ import annotations

import asyncio
import difflib
import ipaddress
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import Lab, Topology
from lab.httpd import start_services, stop_services
from reconciler.apply.runresult import RunResult
from reconciler.desired.models import Desired
from reconciler.plan.steps import Plan
from tests.conftest import require_lab
from tests.lab.executor_support import raw_state
from tests.lab.nd_support import listening, nd_watched, neighbour_mac, only_the_director
from tests.lab.rollout_support import (
    HTTP_CHECK,
    PORT,
    assert_lossless,
    converge,
    explain,
    pending,
    plan_for,
    settings_toml,
    transport_for,
    under_load,
    write_repo,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

# The last one also carries the rollout test (a VIP on the real servers' lo to hide).
METHODS = ("redirect", "arptables", "nft-arp", "sysctl")
DIRECTORS = ("lvs1", "lvs2")
REAL_SERVERS = ("web1", "web2", "web3")
ASKERS = ("client1", "lvs2")  # a client and a second lab host on the segment


# The plan's own effect breaks web2 for IPv6 whatever the method: client1's IPv6 connections
# to port 80 are reset on input (after a REDIRECT too, which keeps the port), and fast, so the
# failing verification costs no request timeouts.
WEB2_RESETS_CLIENT6 = """
[[state]]
id = "web2-resets-client6"
function = "nft.table_present"
hosts = ["web2"]
[state.args]
family = "ip6"
name = "shoal_break"
chains = [{{ name = "in", hook = "input", priority = "raw", rules = [
  "ip6 saddr {client} tcp dport 80 reject with tcp reset",
] }}]
"""


@dataclass
class DualLab:
    lab: Lab
    vip4: str
    vip6: str
    workdir: Path

    def desired(self, arp_method: str | None, servers: tuple[str, ...] = ("web1", "web2"),
                *, verify: bool = True, extra: str = "",
                directors: tuple[str, str] = DIRECTORS) -> Desired:  # fmt: skip
        """The dual-stack cluster with `arp_method` and `servers` (and `extra` TOML after it),
        `directors[0]` primary; None: no cluster at all."""
        dest = self.workdir / f"repo-{secrets.token_hex(4)}"
        cluster = None if arp_method is None else dual_stack_toml(
            self.vip4, self.vip6, arp_method, servers, directors) + extra  # fmt: skip
        return write_repo(self.lab, dest, cluster, settings_toml(verify=verify))


def dual_stack_toml(vip4: str, vip6: str, arp_method: str, servers: tuple[str, ...],
                    directors: tuple[str, str] = DIRECTORS) -> str:  # fmt: skip
    members = "".join(
        f'\n  [[service.real_server]]\n  host = "{h}"\n  weight = 1\n' for h in servers
    )
    service = """
[[service]]
name = "{name}"
vip = "{vip}"
port = {port}
protocol = "tcp"
scheduler = "wlc"
check = {check}
{members}"""
    return (
        f'[cluster]\nname = "web"\ndirectors = {json.dumps(list(directors))}\n'
        'director = "nftables"\n'
        f'arp_method = "{arp_method}"\n'
        + service.format(name="http", vip=vip4, port=PORT, check=HTTP_CHECK, members=members)
        + service.format(name="http6", vip=vip6, port=PORT, check=HTTP_CHECK, members=members)
    )


@pytest.fixture(scope="module")
async def dual(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DualLab]:
    require_lab()
    topology = Topology.build(directors=2, real_servers=3, clients=1)
    async with Lab.up(f"d{secrets.token_hex(3)}", topology, ephemeral=True) as lab:
        vip4 = str(ipaddress.IPv4Network(lab.subnet)[100])
        vip6 = str(ipaddress.IPv6Network(lab.subnet6).network_address + 0x100)
        await start_services(lab, [PORT])
        try:
            yield DualLab(lab, vip4, vip6, tmp_path_factory.mktemp("dual"))
        finally:
            await stop_services(lab)


XTABLES = ("table ip nat ", "table ip6 nat ", "table arp filter ")


async def host_state(lab: Lab, host: str) -> dict[str, str]:
    """`raw_state`, with the nft tables iptables-nft, ip6tables-nft and arptables-nft keep left
    to their *-save output (compared already): nft 1.0.6 lists a REDIRECT rule that the
    rollback's `ip6tables -A` put back as `counter` alone where the one before read `counter
    redirect`, the same rule to ip6tables-save."""
    state = await raw_state(lab, host)
    head, _, ruleset = state["nft"].partition("\n")
    tables = re.split(r"(?m)^(?=table )", ruleset)
    state["nft"] = head + "\n" + "".join(t for t in tables if not t.startswith(XTABLES))
    return state


def state_diff(before: dict[str, str], after: dict[str, str]) -> str:
    """What differs between two raw states, as unified diffs per part."""
    return "\n".join(
        "\n".join(difflib.unified_diff(before[k].splitlines(), after.get(k, "").splitlines(),
                                        f"{k} before", f"{k} after", lineterm="", n=1))
        for k in before if before[k] != after.get(k)
    )  # fmt: skip


def verified(result: RunResult | None, dual: DualLab, servers: set[str]) -> None:
    """The run applied and its verification saw both VIPs served by `servers`, direct."""
    assert result is not None and result.ok, explain(result) if result else "nothing planned"
    v = result.verification
    assert v is not None and v.ok, explain(result)
    by_vip = {s.vip: s for s in v.services}
    assert set(by_vip) == {dual.vip4, dual.vip6}, v
    for s in by_vip.values():
        assert s.failed == 0 and s.return_packets == 0 and (s.forward_packets or 0) > 0, s
        served = {r.host for r in s.real_servers if (r.received or 0) > 0 and r.answered > 0}
        assert served == servers, s
    nd = [c for c in v.arp if c.vip == dual.vip6]
    assert nd and all(c.probe == "nd" and c.director == "lvs1" for c in nd), v.arp
    assert all([r.host for r in c.responders] == ["lvs1"] for c in nd), v.arp


async def reboot_runtime(lab: Lab, host: str, vip4: str, vip6: str) -> None:
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


async def assert_vip_held(lab: Lab, method: str, vip6: str, hosts: tuple[str, ...]) -> None:
    for h in hosts:
        links = json.loads((await lab.exec(h, ["ip", "-j", "-6", "addr", "show"])).stdout)
        held = [(link["ifname"], a) for link in links for a in link["addr_info"]
                if a["local"] == vip6]  # fmt: skip
        if method == "redirect":
            assert held == [], h  # the VIP never exists on the host
            rules = (await lab.exec(h, ["ip6tables-save", "-t", "nat"])).stdout
            assert f"-A PREROUTING -d {vip6}/128 -p tcp -m tcp --dport {PORT} -j REDIRECT" in rules
        else:
            assert [(dev, a["prefixlen"]) for dev, a in held] == [("lo", 128)], h
            assert not held[0][1].get("tentative"), h


@pytest.mark.parametrize("method", METHODS)
async def test_every_method_converges_verifies_restores_and_rolls_back_exactly(
    dual: DualLab, method: str
) -> None:
    lab, vip4, vip6 = dual.lab, dual.vip4, dual.vip6
    director = lab.hosts["lvs1"].mac
    hosts = (*DIRECTORS, *REAL_SERVERS)
    first = method == METHODS[0]  # the lab is fresh: no cluster yet
    t0 = time.monotonic()
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        marks[name] = round(time.monotonic() - t0, 1)

    # Every phase applies, then the verification fails (the plan's own extra table on web2
    # resets client1's IPv6 connections): every host that changed is rolled back, byte for byte.
    # The first method's apply builds the whole cluster, the others change the method.
    before = dict(
        zip(hosts, await asyncio.gather(*(host_state(lab, h) for h in hosts)), strict=True)
    )
    breaker = WEB2_RESETS_CLIENT6.format(client=lab.hosts["client1"].address6)
    failed, _ = await converge(lab, dual.desired(method, extra=breaker))
    assert failed is not None and not failed.ok
    v = failed.verification
    assert v is not None and not v.ok, explain(failed)
    assert any(f.host == "web2" for f in v.failures), explain(failed)
    assert all(s.result is True for s in failed.steps()), explain(failed)
    changed = {(p.host, p.phase) for p in failed.phases if p.ok}
    touched = {"lvs1", "lvs2", "web1", "web2"} if first else {"web1", "web2"}
    assert {h for h, _ in changed} >= touched, explain(failed)
    assert {(r.host, r.phase) for r in failed.rollbacks} == changed, explain(failed)
    assert all(r.proven for r in failed.rollbacks), explain(failed)
    after = dict(
        zip(hosts, await asyncio.gather(*(host_state(lab, h) for h in hosts)), strict=True)
    )
    for h in hosts:
        if after[h] != before[h]:
            print(f"\n{h} after the rollback:\n{state_diff(before[h], after[h])}")
        assert after[h] == before[h], (h, explain(failed))
    mark("rolled back")

    # The cluster converges and verifies; only lvs1 is ever heard for the IPv6 VIP (before the
    # first apply puts it on lvs1, nobody is).
    async with listening(lab, vip6) as heard, nd_watched(lab, vip6, ASKERS) as seen:
        result, plan_after = await converge(lab, dual.desired(method))
    verified(result, dual, {"web1", "web2"})
    assert plan_after.empty, pending(plan_after)
    summary = only_the_director(seen, director, from_start=first)
    assert {str(mac) for _, mac, _ in heard["adverts"]} == {director}, heard["adverts"]
    # What client1 hears from the VIP is the replies to its own requests and, from lvs1 alone,
    # the unsolicited advertisement to all nodes of a director taking the VIP; nothing else.
    client6 = lab.hosts["client1"].address6
    others = {(str(mac), str(dst)) for _, mac, dst in heard["from_vip"] if dst != client6}
    assert others <= {(director, "ff02::1")}, heard["from_vip"]
    mark("converged")
    await assert_vip_held(lab, method, vip6, ("web1", "web2"))

    # A reboot takes the runtime state; the boot restore brings back exactly what was planned.
    desired = dual.desired(method, verify=False)
    async with transport_for(lab, desired) as t:
        for h in ("web1", "web2"):
            await reboot_runtime(lab, h, vip4, vip6)
        flushed = await plan_for(desired, t)
        assert {h for h, hp in flushed.hosts.items() if hp.steps} == {"web1", "web2"}
        for h in ("web1", "web2"):
            await lab.exec(h, ["/usr/local/sbin/shoal-restore"])
        assert pending(await plan_for(desired, t)) == []
    mark("restored")
    print(f"\n{method}: {marks}; ND {summary}")


async def test_join_drain_and_removal_under_ipv6_load_lose_nothing_one_director_heard(
    dual: DualLab,
) -> None:
    """The director side of a rollout is the same for every method: run once, with the last."""
    lab, vip6 = dual.lab, dual.vip6
    method = METHODS[-1]
    director = lab.hosts["lvs1"].mac
    result, plan_after = await converge(lab, dual.desired(method, verify=False))
    assert result is None or result.ok, explain(result)
    assert plan_after.empty, pending(plan_after)
    summary = []
    for servers, joins in ((REAL_SERVERS, True), (("web1", "web2"), False)):
        # Verification off: the IPv6 load itself shows who serves (web3 after the join, not
        # after the removal), and the per-method test verifies both families already.
        change = dual.desired(method, servers, verify=False)

        async def apply(change: Desired = change) -> tuple[RunResult | None, Plan]:
            return await converge(lab, change)

        async with nd_watched(lab, vip6, ASKERS) as seen:
            (ran, plan_after), load = await under_load(lab, vip6, apply)
        assert ran is not None and ran.ok, explain(ran) if ran else "nothing planned"
        result = ran
        assert plan_after.empty, pending(plan_after)
        assert_lossless(load, set(REAL_SERVERS))
        if joins:
            assert load.after["web3"] > 0, load.summary()
        else:
            assert "web3" not in load.after, load.summary()
            drains = [s for s in result.steps() if s.host == "lvs1" and "/drain/" in s.id]
            # One drain per service, the IPv6 one included.
            assert len(drains) == 2 and all(s.result for s in drains), explain(result)
            svc6 = f"/drain/svc_tcp_{vip6.replace(':', '_')}_{PORT}/"
            assert any(svc6 in s.id for s in drains), explain(result)
            removed = [s for s in result.steps() if s.id.startswith("web3/remove-addr-")]
            assert removed and all(s.result for s in removed), explain(result)
        summary.append(only_the_director(seen, director, from_start=False))
        step_times = {s.id: s.duration for s in result.steps() if (s.duration or 0) > 1}
        print(f"\n{'join' if joins else 'drain+remove'}: {load.summary()}; slow steps {step_times}")
    print(f"ND {'; '.join(summary)}")


async def test_a_director_taking_the_ipv6_vip_advertises_it_and_neighbour_entries_move(
    dual: DualLab,
) -> None:
    """Costs two applies without verification (~15-25 s): lvs1 primary (already, after the
    rollout test), then lvs2. Neither client1 nor web3 talks to the VIP between the entry seen on
    lvs1's MAC and the one read after the takeover, so only an advertisement can have moved it
    (Linux would otherwise keep the old MAC until the entry goes stale and is probed again)."""
    lab, vip6 = dual.lab, dual.vip6
    method = METHODS[-1]
    old, new = lab.hosts["lvs1"].mac, lab.hosts["lvs2"].mac
    result, plan_after = await converge(lab, dual.desired(method, verify=False))
    assert result is None or result.ok, explain(result)
    assert plan_after.empty, pending(plan_after)
    watchers = ("client1", "web3")  # web3 is no real server of the cluster here: a lab host
    for h in watchers:
        await lab.exec(h, ["ping", "-6", "-c", "1", "-W", "5", vip6])
        assert await neighbour_mac(lab, h, vip6) == old, h
    takeover = dual.desired(method, verify=False, directors=("lvs2", "lvs1"))
    async with listening(lab, vip6) as heard:
        t0 = time.time()
        result, plan_after = await converge(lab, takeover)
        t1 = time.time()
    assert result is not None and result.ok, explain(result) if result else "nothing planned"
    assert plan_after.empty, pending(plan_after)
    moved = {h: await neighbour_mac(lab, h, vip6) for h in watchers}
    assert moved == {h: new for h in watchers}, (moved, heard)
    unsolicited = [(t, str(mac)) for t, mac, dst in heard["adverts"]
                   if dst == "ff02::1" and isinstance(t, float)]  # fmt: skip
    assert unsolicited and {mac for _, mac in unsolicited} == {new}, heard["adverts"]
    assert all(t0 <= t <= t1 for t, _ in unsolicited), (t0, t1, unsolicited)
    print(f"\ntakeover: {len(unsolicited)} unsolicited advertisements from lvs2, entries {moved}")
