"""The DR safety invariants on a real server configured by hand (issue 13), per ARP method.

web3 is set up the way the seed HOWTO says (method 1, chains corrected): `arptables -A INPUT
-d VIP -j DROP`, the ineffective `-A OUTPUT -d VIP -j mangle --mangle-ip-s RIP`, and
`ip addr add VIP dev eth0`. Then, through the real plan and apply path, with the nftables
director: shoal takes web3 into the cluster (arptables, nft-arp or redirect), web3 leaves the
service, joins again, and the cluster switches to sysctl; last, `adopt` lets shoal take the
hand-added VIP away. During every apply, client1 and client2 send a broadcast ARP request for
the VIP every 50 ms (`arp_probe.py`) and web3, again and again, forgets its neighbours and
sends a packet from the VIP (as its replies to the clients are), so it must resolve a MAC:
only the director may ever answer for the VIP, and nobody else may send ARP as the VIP. A plan
that cannot keep that names the violation (host, address, interface, rule) instead of applying
to web3.

One lab for the module; each method's case starts from a reset web3.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from lab import Lab, Topology
from lab.httpd import start_services, stop_services
from reconciler.apply.runresult import RunResult
from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.plan.steps import Plan
from tests.conftest import require_lab
from tests.lab.rollout_support import (
    FIXTURE,
    PORT,
    cluster_toml,
    converge,
    explain,
    settings_toml,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

ARP_PROBE = Path(__file__).with_name("arp_probe.py")
PROBERS = ("client1", "client2")
# Times web3 speaks from the VIP once a change is done: a leak it left shows within them.
SPEAKS_AFTER = 3
T = TypeVar("T")


class Case:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.vip = str(ipaddress.IPv4Network(lab.subnet)[100])
        self.rip = lab.hosts["web3"].address

    def desired(self, servers: tuple[str, ...], method: str, *, adopt: bool = False) -> Desired:
        dest = self.workdir / f"repo-{secrets.token_hex(4)}"
        self.lab.write_config_repo(FIXTURE, dest)
        (dest / "shoal.toml").write_text(settings_toml())
        weights = dict.fromkeys(servers, 1)
        (dest / "clusters" / "web.toml").write_text(cluster_toml(self.vip, weights, method))
        if adopt:
            inventory = dest / "inventory.toml"
            text = inventory.read_text()
            head = next(ln for ln in text.splitlines() if ln.startswith("[hosts.web3]"))
            inventory.write_text(text.replace(head, f"{head}\nadopt = true"))
        return load_repository(dest)

    async def sh(self, host: str, script: str) -> str:
        res = await self.lab.exec(host, ["sh", "-c", script, "sh", self.vip, self.rip])
        return str(res.stdout)

    async def watched(self, change: Callable[[], Awaitable[T]], hand_leak: str = "none") -> T:
        """Run `change()` while PROBERS ask for the VIP; no MAC but the director's may answer.

        `hand_leak`: web3's hand-made seed rules announce the VIP before the change starts
        ("until_done": the change must stop it; "stays": a refused host keeps doing it).
        """
        stop = f"/tmp/shoal-inv-{secrets.token_hex(3)}"

        async def probe(host: str) -> tuple[list[str], list[tuple[float, str]]]:
            res = await self.lab.exec(host, ["python3", "-", "--vip", self.vip, "--interval",
                                             "0.05", "--duration", "120", "--until", stop],
                                      input=ARP_PROBE.read_text(), timeout=150)  # fmt: skip
            out = json.loads(str(res.stdout))
            announcers = [(float(t), str(m)) for t, m in out["announcers"]]
            return [str(m) for _, m in out["replies"]], announcers

        done = asyncio.Event()
        client = self.lab.hosts["client1"].address

        async def speak_from_vip() -> None:
            # No VIP on web3 (redirect, lo before it is added): ping fails, which is fine.
            # What is watched is the ARP request the kernel sends at once to resolve client1
            # for the packet from the VIP; the echo reply goes to the director that owns the
            # VIP, never back to web3, so ping only waits out -W: a short one, then the next
            # speak (the probes keep listening until they are stopped after the last one).
            script = ('ip neigh flush dev eth0; ping -c 1 -W 0.2 -I "$1" "$2" >/dev/null 2>&1; '
                      "true")  # fmt: skip
            after = 0
            while after < SPEAKS_AFTER:
                changed = done.is_set()
                await self.lab.exec("web3", ["sh", "-c", script, "sh", self.vip, client])
                after += changed  # web3 spoke from the VIP in the state the change left
                await asyncio.sleep(0.1)

        probes = [asyncio.ensure_future(probe(h)) for h in PROBERS]
        speaker = asyncio.ensure_future(speak_from_vip())
        try:
            await asyncio.sleep(0.3)  # the probes are on the wire before the change starts
            outcome = await change()
            finished = time.time()
            done.set()
            await speaker
        finally:
            done.set()
            speaker.cancel()
            await asyncio.gather(*(self.lab.exec(h, ["touch", stop]) for h in PROBERS))
        director = self.lab.hosts["lvs1"].mac.lower()
        for host, task in zip(PROBERS, probes, strict=True):
            macs, announcers = await task
            assert macs and set(macs) == {director}, (host, sorted(set(macs)))
            if hand_leak == "stays":
                continue
            late = [m for t, m in announcers if hand_leak == "none" or t > finished]
            assert set(late) <= {director}, (host, "announced", sorted(set(late)))
        return outcome

    async def apply(self, desired: Desired, hand_leak: str = "none") -> Plan:
        """Plan and apply under the ARP probes; the plan after the apply."""
        result, after = await self.watched(lambda: converge(self.lab, desired), hand_leak)
        assert result is None or result.ok or refused_and_nothing_ran(result), explain(result)
        return after

    async def rules(self, host: str = "web3") -> list[str]:
        return [ln for ln in (await self.sh(host, "arptables-save")).splitlines()
                if ln.startswith("-A")]  # fmt: skip


@pytest.fixture(scope="module")
async def case(
    session_token: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Case]:
    require_lab()
    async with Lab.up(f"a{session_token}", Topology.build(clients=2), ephemeral=True) as lab:
        await start_services(lab, [PORT])
        try:
            yield Case(lab, tmp_path_factory.mktemp("invariants"))
        finally:
            await stop_services(lab)


HAND_SEED = (
    'arptables -A INPUT -d "$1" -j DROP && '
    'arptables -A OUTPUT -d "$1" -j mangle --mangle-ip-s "$2" && ip addr add "$1" dev eth0'
)
HAND_RESET = (
    'while arptables -D INPUT -d "$1" -j DROP 2>/dev/null; do :; done; '
    'while arptables -D OUTPUT -d "$1" -j mangle --mangle-ip-s "$2" 2>/dev/null; do :; done; '
    'while arptables -D OUTPUT -s "$1" -j mangle --mangle-ip-s "$2" 2>/dev/null; do :; done; '
    'ip addr del "$1/32" dev eth0 2>/dev/null; nft delete table ip nat 2>/dev/null; '
    "nft delete table arp filter 2>/dev/null; true"
)


def refused_and_nothing_ran(result: RunResult) -> bool:
    """A plan with a refused host runs nothing on any host, and says why."""
    return (
        {e.kind for e in result.errors} == {"SafetyRuleBroken"}
        and all(s.result is None for s in result.steps())
        and result.comment.startswith("refused: web3 ")
    )


def result_of(plan: Plan) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    hp = plan.hosts.get("web3")
    if hp is None:  # nothing of shoal's on web3 and nothing wanted: not in the plan
        return (), (), []
    return hp.violations, hp.notes, [s.reason for s in hp.skipped]


@pytest.mark.parametrize("method", ["arptables", "nft-arp", "redirect"])
async def test_a_hand_configured_real_server_never_answers_arp_for_the_vip(
    case: Case, method: str
) -> None:
    vip = case.vip
    # Reset: web3 out of the cluster and bare, web1/web2 on sysctl; then the HOWTO by hand.
    await case.apply(case.desired(("web1", "web2"), "sysctl", adopt=True))
    await case.sh("web3", HAND_RESET)
    await case.sh("web2", "nft add table ip nat")  # a foreign empty table: it must stay
    assert (await case.apply(case.desired(("web1", "web2"), "sysctl"))).empty
    await case.sh("web3", HAND_SEED)

    # 1. Take web3 over with `method`.
    servers = ("web1", "web2", "web3")
    # The seed's -d rule announces the VIP until shoal's -s rule (or table) is in place; the
    # redirect method puts none there, so web3 is refused and goes on until adopt removes it.
    leak = "stays" if method == "redirect" else "until_done"
    after = await case.apply(case.desired(servers, method), leak)
    violations, notes, _ = result_of(after)
    if method == "redirect":
        # Redirect puts no ARP rule in place: the hand-added VIP on eth0 stays unguarded
        # towards ARP web3 sends, so web3 is refused, in words naming what is wrong.
        (violation,) = violations
        assert f"web3 holds {vip}/32 on eth0" in violation
        assert f"-d {vip}" in violation and "no OUTPUT rule" in violation
        assert "seed HOWTO's -d form" in violation
        after = await case.apply(case.desired(servers, method, adopt=True), "until_done")
        assert not result_of(after)[0]
        assert vip not in await case.sh("web3", "ip -br addr show dev eth0")
    else:
        assert not violations
        assert any("seed HOWTO's -d form" in n and "ineffective" in n for n in notes), notes
    assert not [p for p in after.hosts.values() if p.steps], "not converged"

    # 2. web3 leaves the service: its suppression stays while the hand-added VIP does.
    after = await case.apply(case.desired(("web1", "web2"), method))
    _, _, skipped = result_of(after)
    if method != "redirect":
        assert any(f"{vip}/32 stays on eth0" in r for r in skipped), skipped
        assert vip in await case.sh("web3", "ip -br addr show dev eth0")
    # ... and joins again.
    after = await case.apply(case.desired(servers, method))
    assert not result_of(after)[0]

    # 3. The cluster switches to sysctl.
    if method == "arptables":
        # An operator's exact copy of shoal's rule: it survives shoal's removal of its own.
        await case.sh("web3", 'arptables -A OUTPUT -s "$1" -j mangle --mangle-ip-s "$2"')
    after = await case.apply(case.desired(servers, "sysctl"))
    violations, _, skipped = result_of(after)
    assert not violations
    if method != "redirect":
        assert any(f"{vip}/32 stays on eth0" in r for r in skipped), skipped
        # adopt: the hand-added VIP goes first, then the suppression that guarded it.
        after = await case.apply(case.desired(servers, "sysctl", adopt=True))
        assert not result_of(after)[0] and not result_of(after)[2], result_of(after)
    assert vip not in await case.sh("web3", "ip -br addr show dev eth0")
    assert vip in await case.sh("web3", "ip -br addr show dev lo")
    if method == "arptables":
        # One of the two copies went (shoal's): arptables-save may print the RIP as a name.
        rules = await case.rules()
        copies = [r for r in rules if r.startswith(f"-A OUTPUT -j mangle -s {vip} --mangle-ip-s")]
        assert len(copies) == 1, rules
    # Tables shoal's rules made on web1 are gone; web2's foreign empty table stays.
    tables = await case.sh("web1", "nft list tables")
    assert "table arp filter" not in tables and "table ip nat" not in tables, tables
    assert "table ip nat" in await case.sh("web2", "nft list tables")
    await case.sh("web2", "nft delete table ip nat")


async def test_a_plan_refuses_a_host_whose_hand_rules_are_gone(case: Case) -> None:
    """The issue's case 2: VIP on eth0 under sysctl with no ARP rule: refused, not in sync."""
    await case.apply(case.desired(("web1", "web2"), "sysctl", adopt=True))
    await case.sh("web3", HAND_RESET + '; ip addr add "$1" dev eth0')
    try:
        desired = case.desired(("web1", "web2", "web3"), "sysctl")
        result, after = await converge(case.lab, desired)
        (violation,) = result_of(after)[0]
        assert violation.startswith(f"web3 holds {case.vip}/32 on eth0, but no INPUT rule")
        assert after.hosts["web3"].steps == ()
        # web1 and web2 were in sync already; a plan with a change elsewhere would run nothing.
        assert result is None or refused_and_nothing_ran(result), explain(result) if result else ""
    finally:
        await case.sh("web3", HAND_RESET)
