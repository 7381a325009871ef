"""The verification phase that ends every apply, on the session lab with real traffic.

fixtures/config-repo (nftables director on lvs1/lvs2, web1 weight 1, web2 weight 2) is applied
with each ARP method in turn: the run's verification passes (every real server answers, ARP
for the VIP only from lvs1), then web2 is broken by hand the way an operator could break it for
that method and `verify_desired` must fail naming web2. A plan whose own effect breaks the
cluster (a [[state]] that puts the VIP on web2's eth0, so web2 answers ARP for it) must be
rolled back on every host it changed, byte for byte, with the run saying which check failed on
which host.

The lab HTTP service runs on web1/web2 for the module; each test starts from hosts without the
cluster and removes it again (a plan from the repository without clusters/).
"""

from __future__ import annotations

import ipaddress
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from lab import Lab
from lab.httpd import start_services, stop_services
from reconciler.apply.executor import apply_plan
from reconciler.apply.runresult import RunResult
from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.facts.gather import gather_facts
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import plan_desired
from reconciler.transport.ssh import SSHTransport
from reconciler.verify.result import VerificationResult
from reconciler.verify.run import verify_desired
from tests.lab.executor_support import WEB2_REDIRECT_AWAY, raw_state

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "config-repo"
REAL_SERVERS = ("web1", "web2")
HOSTS = ("lvs1", "lvs2", *REAL_SERVERS)
METHODS = ("sysctl", "arptables", "nft-arp", "redirect")
SUPPRESS_KEYS = [
    f"net.ipv4.conf.{d}.{k}" for d in ("all", "eth0") for k in ("arp_ignore", "arp_announce")
]


def _explain(result: RunResult) -> str:
    return result.model_dump_json(indent=1, exclude={"phases", "hosts"})


def _repo(lab: Lab, dest: Path, *, method: str = "sysctl", extra: str = "",
          with_cluster: bool = True) -> Desired:  # fmt: skip
    if dest.exists():
        shutil.rmtree(dest)
    lab.write_config_repo(FIXTURE, dest)
    settings = dest / "shoal.toml"
    # A lock-out timer a busy machine still confirms in time; few requests, enough that each
    # real server gets some.
    settings.write_text(
        settings.read_text()
        .replace("lockout_timeout = 60", "lockout_timeout = 30")
        .replace("requests_per_server = 10", "requests_per_server = 4\ntimeout = 1.0")
    )
    web = dest / "clusters" / "web.toml"
    web.write_text(
        web.read_text().replace('arp_method = "sysctl"', f'arp_method = "{method}"') + extra
    )
    if not with_cluster:
        shutil.rmtree(dest / "clusters")
        (dest / "clusters").mkdir()
    return load_repository(dest)


async def _apply(lab: Lab, desired: Desired) -> RunResult:
    async with SSHTransport(desired.inventory, desired.known_hosts, lab.client_key_path) as t:
        facts = await gather_facts(t, sorted(desired.inventory.hosts), managed_paths(desired))
        return await apply_plan(plan_desired(desired, facts), desired, t, check_stale=True)


async def _verify(lab: Lab, desired: Desired) -> VerificationResult:
    async with SSHTransport(desired.inventory, desired.known_hosts, lab.client_key_path) as t:
        return await verify_desired(desired, t)


async def _forget_vip(lab: Lab, vip: str) -> None:
    """client1 forgets whoever answered ARP for the VIP last (a broken host may have)."""
    await lab.exec("client1", ["ip", "neigh", "del", vip, "dev", "eth0"], check=False)


@pytest.fixture(scope="module")
async def services(lab: Lab) -> AsyncIterator[None]:
    await start_services(lab, [80], hosts=list(REAL_SERVERS))
    yield
    await stop_services(lab, hosts=list(REAL_SERVERS))


@pytest.fixture
async def clean_hosts(
    lab: Lab, services: None, tmp_path: Path
) -> AsyncIterator[dict[str, dict[str, str]]]:
    """No cluster on the hosts before and after the test; their raw state before it."""
    empty = _repo(lab, tmp_path / "empty", with_cluster=False)
    cleared = await _apply(lab, empty)
    assert cleared.ok, _explain(cleared)
    yield {h: await raw_state(lab, h) for h in HOSTS}
    cleared = await _apply(lab, empty)
    assert cleared.ok, _explain(cleared)


# --- breaking web2 by hand, per ARP method -----------------------------------------------------

Repair = Callable[[], Awaitable[None]]


async def _break_sysctl(lab: Lab, vip: str) -> Repair:
    # ARP suppression off: with the VIP on lo, web2 answers ARP for it on eth0.
    before = (await lab.exec("web2", ["sysctl", "-n", *SUPPRESS_KEYS])).stdout.split()
    await lab.exec("web2", ["sysctl", "-q", "-w", *(f"{k}=0" for k in SUPPRESS_KEYS)])

    async def repair() -> None:
        values = zip(SUPPRESS_KEYS, before, strict=True)
        await lab.exec("web2", ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values)])

    return repair


async def _break_arptables(lab: Lab, vip: str) -> Repair:
    # Both rules go (as after an `arptables -F`): web2 holds the VIP on eth0 and answers ARP for
    # it. Without the INPUT drop alone it still answers, but the OUTPUT mangle rewrites the
    # reply's sender to its own address, which no ARP client takes for the VIP.
    rules = [
        ["INPUT", "-d", vip, "-j", "DROP"],
        ["OUTPUT", "-s", vip, "-j", "mangle", "--mangle-ip-s", lab.hosts["web2"].address],
    ]
    for rule in rules:
        await lab.exec("web2", ["arptables", "-D", *rule])

    async def repair() -> None:
        for rule in rules:
            await lab.exec("web2", ["arptables", "-A", *rule])

    return repair


async def _break_nft_arp(lab: Lab, vip: str) -> Repair:
    saved = (await lab.exec("web2", ["nft", "list", "table", "arp", "shoal_arp"])).stdout
    await lab.exec("web2", ["nft", "delete", "table", "arp", "shoal_arp"])

    async def repair() -> None:
        await lab.exec("web2", ["nft", "-f", "-"], input=saved)

    return repair


async def _break_redirect_vip(lab: Lab, vip: str) -> Repair:
    # The redirect method keeps the VIP off the real server; someone adds it to eth0 anyway.
    await lab.exec("web2", ["ip", "addr", "add", f"{vip}/32", "dev", "eth0"])

    async def repair() -> None:
        await lab.exec("web2", ["ip", "addr", "del", f"{vip}/32", "dev", "eth0"])

    return repair


async def _break_redirect_rule(lab: Lab, vip: str) -> Repair:
    # No VIP there, so without its REDIRECT the packets for the VIP die on web2 unanswered.
    rule = ["PREROUTING", "-d", f"{vip}/32", "-p", "tcp", "-m", "tcp", "--dport", "80",
            "-j", "REDIRECT"]  # fmt: skip
    await lab.exec("web2", ["iptables", "-t", "nat", "-D", *rule])

    async def repair() -> None:
        await lab.exec("web2", ["iptables", "-t", "nat", "-A", *rule])

    return repair


Breaker = Callable[[Lab, str], Awaitable[Repair]]
# method -> (how web2 is broken, the check that must name web2, what its message says)
BREAKS: dict[str, list[tuple[Breaker, str, str]]] = {
    "sysctl": [(_break_sysctl, "arp", "web2 answers ARP for {vip}")],
    "arptables": [(_break_arptables, "arp", "web2 answers ARP for {vip}")],
    "nft-arp": [(_break_nft_arp, "arp", "web2 answers ARP for {vip}")],
    "redirect": [
        (_break_redirect_vip, "arp", "web2 answers ARP for {vip}"),
        (_break_redirect_rule, "traffic", "answered none"),
    ],
}


@pytest.mark.parametrize("method", METHODS)
async def test_apply_verifies_and_a_hand_broken_real_server_is_named(
    lab: Lab, clean_hosts: dict[str, dict[str, str]], tmp_path: Path, method: str
) -> None:
    desired = _repo(lab, tmp_path / "repo", method=method)
    vip = desired.clusters["web"].services[0].vip
    started = time.monotonic()
    result = await _apply(lab, desired)
    assert result.ok, _explain(result)
    v = result.verification
    assert v is not None and v.ok, _explain(result)
    (svc,) = v.services
    assert svc.director == "lvs1" and svc.failed == 0 and svc.return_packets == 0
    assert {h: n > 0 for h, n in svc.distribution.items()} == {"web1": True, "web2": True}
    assert [r.host for r in v.arp[0].responders] == ["lvs1"]
    applied_in = time.monotonic() - started

    for breaker, check, message in BREAKS[method]:
        repair = await breaker(lab, vip)
        try:
            broken = await _verify(lab, desired)
        finally:
            await repair()
            await _forget_vip(lab, vip)
        explain = broken.model_dump_json(indent=1)
        assert not broken.ok, explain
        named = [f for f in broken.failures if f.check == check and f.host]
        assert [f.host for f in named] == ["web2"], explain
        assert message.format(vip=vip) in named[0].message, explain
        # web1 may be named too, for what web2 did to it (a client that sends every request
        # to web2's MAC starves web1), but never for ARP or for failing to answer.
        blamed = {f.host for f in broken.failures if f.check in ("arp", check) and f.host}
        assert blamed == {"web2"}, explain
    print(f"{method}: apply + verification {applied_in:.1f}s")


# A plan that would put the VIP on web2's client-facing interface, where arp_ignore=1 no longer
# hides it: an LVS-DR safety rule broken by the plan itself.
WEB2_VIP_ON_ETH0 = """
[[state]]
id = "web2-vip-on-eth0"
function = "addr.present"
hosts = ["web2"]
args = {{ address = "{vip}", prefix = 32, interface = "eth0" }}
"""


async def test_plan_failing_verification_is_rolled_back_and_says_why(
    lab: Lab, clean_hosts: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    vip = str(ipaddress.IPv4Network(lab.subnet)[100])  # the fixture's VIP, in this lab
    desired = _repo(lab, tmp_path / "repo", extra=WEB2_REDIRECT_AWAY.format(vip=vip))
    assert desired.clusters["web"].services[0].vip == vip
    try:
        result = await _apply(lab, desired)
    finally:
        await _forget_vip(lab, vip)
    assert not result.ok
    v = result.verification
    assert v is not None and not v.ok, _explain(result)
    # Every step applied; it was the verification that failed, and it names web2.
    assert all(s.result is True for s in result.steps()), _explain(result)
    errors = [e for e in result.errors if e.kind == "VerificationError"]
    assert ("web2", "verify/traffic") in {(e.host, e.step_id) for e in errors}, _explain(result)
    assert result.comment.startswith("verification failed (traffic check"), result.comment
    assert "web2 received" in result.comment and "answered none" in result.comment
    # Every host phase that changed was rolled back, directors first, each one proven.
    changed = {(p.host, p.phase) for p in result.phases if p.ok}
    assert {(r.host, r.phase) for r in result.rollbacks} == changed
    assert all(r.proven and r.by == "controller" for r in result.rollbacks), _explain(result)
    order = [r.phase for r in result.rollbacks]
    assert order == sorted(order, key=["extra", "director_primary", "director_backup",
                                       "real_servers_prepare"].index)  # fmt: skip
    assert all(s.rolled_back for s in result.steps())
    for h in HOSTS:
        assert await raw_state(lab, h) == clean_hosts[h], h


async def test_plan_breaking_a_safety_rule_is_refused_and_runs_nothing(
    lab: Lab, clean_hosts: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    vip = str(ipaddress.IPv4Network(lab.subnet)[100])
    desired = _repo(lab, tmp_path / "repo", extra=WEB2_VIP_ON_ETH0.format(vip=vip))
    result = await _apply(lab, desired)
    assert not result.ok and result.verification is None, _explain(result)
    (error,) = result.errors
    assert (error.kind, error.host) == ("SafetyRuleBroken", "web2"), _explain(result)
    assert f"web2 holds {vip}/32 on eth0" in error.message
    assert result.comment.startswith("refused: web2 "), result.comment
    # Not only web2: the directors would have sent web2 traffic it was never prepared for.
    assert all(s.result is None for s in result.steps()), _explain(result)
    assert not result.rollbacks
    for h in HOSTS:
        assert await raw_state(lab, h) == clean_hosts[h], h
